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

    /// (Components and the largest one are tested where they live, `metricunet_core::mask`.)
    #[test]
    fn box_and_centroid_of_a_line() {
        let dims = [6, 4, 3];
        let mut m = vec![false; 72];
        for x in 2..6 {
            m[x + 6 * 2 + 24] = true;
        }
        assert_eq!(bounding_box(&m, dims), Some(([2, 2, 1], [6, 3, 2])));
        assert_eq!(centroid(&m, dims), Some([3.5, 2.0, 1.0]));
        assert_eq!(bounding_box(&[false; 72], dims), None);
        assert_eq!(centroid(&[false; 72], dims), None);
    }
}
