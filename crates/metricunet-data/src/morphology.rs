//! Binary-mask helpers: connected components, bounding box, centroid.

/// The largest 6-connected component of `mask` (`dims` = `[nx, ny, nz]`, x fastest).
pub fn largest_component(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    let mut label = vec![0u32; mask.len()];
    let mut best = (0u32, 0usize);
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        let mut size = 0usize;
        label[start] = next;
        stack.push(start);
        while let Some(v) = stack.pop() {
            size += 1;
            let (x, y, z) = (v % nx, (v / nx) % ny, v / (nx * ny));
            let mut visit = |n: usize| {
                if mask[n] && label[n] == 0 {
                    label[n] = next;
                    stack.push(n);
                }
            };
            if x > 0 {
                visit(v - 1);
            }
            if x + 1 < nx {
                visit(v + 1);
            }
            if y > 0 {
                visit(v - nx);
            }
            if y + 1 < ny {
                visit(v + nx);
            }
            if z > 0 {
                visit(v - nx * ny);
            }
            if z + 1 < nz {
                visit(v + nx * ny);
            }
        }
        if size > best.1 {
            best = (next, size);
        }
    }
    label.iter().map(|&l| l != 0 && l == best.0).collect()
}

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
