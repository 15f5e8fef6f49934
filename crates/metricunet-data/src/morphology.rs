//! Binary-mask helpers: connected components, bounding box, centroid.

pub use metricunet_core::mask::{fill_holes, largest_component};
pub use metricunet_core::metric::bounding_box;

/// Mean voxel position of the set voxels, if any.
pub fn centroid(mask: &[bool], dims: [usize; 3]) -> Option<[f64; 3]> {
    let [nx, ny, _] = dims;
    let mut sum = [0.0f64; 3];
    let mut n = 0usize;
    for (v, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        sum[0] += (v % nx) as f64;
        sum[1] += ((v / nx) % ny) as f64;
        sum[2] += (v / (nx * ny)) as f64;
        n += 1;
    }
    (n > 0).then(|| sum.map(|s| s / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_component_box_and_centroid() {
        let dims = [6, 4, 3];
        let mut m = vec![false; 72];
        // a 2-voxel blob and a 4-voxel line; diagonal neighbours do not connect
        m[0] = true;
        m[1] = true;
        for x in 2..6 {
            m[x + 6 * 2 + 24] = true;
        }
        m[1 + 6 + 24] = true; // touches (1,0,0)? no: differs in y and z
        let l = largest_component(&m, dims);
        assert_eq!(l.iter().filter(|&&b| b).count(), 4);
        assert!(l[2 + 12 + 24] && !l[0]);
        assert_eq!(bounding_box(&l, dims), Some(([2, 2, 1], [6, 3, 2])));
        assert_eq!(centroid(&l, dims), Some([3.5, 2.0, 1.0]));
        assert_eq!(bounding_box(&[false; 72], dims), None);
        assert!(largest_component(&[false; 72], dims).iter().all(|&b| !b));
    }
}
