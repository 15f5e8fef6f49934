//! Binary-mask algorithms shared by data preparation, stage-1 localisation and the
//! post-processing plugins (one connected-component labelling for all of them). Masks are
//! flat, `dims = [nx, ny, nz]`, x fastest; neighbours are the 6 face neighbours.

/// The 6-connected components of the voxels where `inside` holds: a label per voxel (0 =
/// outside, components numbered from 1 in scan order) and each component's size (index
/// `label - 1`).
pub fn components(dims: [usize; 3], inside: impl Fn(usize) -> bool) -> (Vec<u32>, Vec<usize>) {
    let [nx, ny, nz] = dims;
    let n = nx * ny * nz;
    let mut label = vec![0u32; n];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..n {
        if label[start] != 0 || !inside(start) {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        let mut size = 0usize;
        label[start] = id;
        stack.push(start);
        while let Some(v) = stack.pop() {
            size += 1;
            let (x, y, z) = (v % nx, (v / nx) % ny, v / (nx * ny));
            let mut visit = |w: usize| {
                if label[w] == 0 && inside(w) {
                    label[w] = id;
                    stack.push(w);
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
        sizes.push(size);
    }
    (label, sizes)
}

/// The largest 6-connected component of `mask` (the first in scan order among equals); all
/// false when `mask` is empty.
pub fn largest_component(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let (label, sizes) = components(dims, |v| mask[v]);
    let Some(best) = sizes
        .iter()
        .enumerate()
        .fold(None, |b: Option<(usize, usize)>, (i, &s)| match b {
            Some((_, bs)) if bs >= s => b,
            _ => Some((i, s)),
        })
        .map(|(i, _)| i as u32 + 1)
    else {
        return vec![false; mask.len()];
    };
    label.iter().map(|&l| l == best).collect()
}

/// `mask` with its holes filled: every background voxel not 6-connected to the volume's
/// border becomes foreground (3D, as scipy's `binary_fill_holes` with its default
/// structure).
pub fn fill_holes(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    let (label, sizes) = components(dims, |v| !mask[v]);
    let mut open = vec![false; sizes.len() + 1];
    for (v, &l) in label.iter().enumerate() {
        let (x, y, z) = (v % nx, (v / nx) % ny, v / (nx * ny));
        if l != 0 && (x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz) {
            open[l as usize] = true;
        }
    }
    mask.iter()
        .zip(&label)
        .map(|(&m, &l)| m || !open[l as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_and_the_largest() {
        let dims = [6, 4, 3];
        let mut m = vec![false; 72];
        // a 2-voxel blob and a 4-voxel line; diagonal neighbours do not connect
        m[0] = true;
        m[1] = true;
        for x in 2..6 {
            m[x + 6 * 2 + 24] = true;
        }
        m[1 + 6 + 24] = true;
        let (_, sizes) = components(dims, |v| m[v]);
        assert_eq!(sizes, [2, 1, 4]);
        let l = largest_component(&m, dims);
        assert_eq!(l.iter().filter(|&&b| b).count(), 4);
        assert!(l[2 + 12 + 24] && !l[0]);
        assert!(largest_component(&[false; 72], dims).iter().all(|&b| !b));
    }

    #[test]
    fn holes_inside_are_filled_and_open_cavities_are_not() {
        // a 5 x 5 x 5 hollow cube (shell 1 voxel) in a 7^3 volume: its 3^3 inside is a hole
        let dims = [7, 7, 7];
        let at = |x: usize, y: usize, z: usize| (z * 7 + y) * 7 + x;
        let mut m = vec![false; 343];
        for z in 1..6 {
            for y in 1..6 {
                for x in 1..6 {
                    let shell = [x, y, z].iter().any(|&c| c == 1 || c == 5);
                    m[at(x, y, z)] = shell;
                }
            }
        }
        let f = fill_holes(&m, dims);
        assert_eq!(f.iter().filter(|&&b| b).count(), 125);
        assert!(f[at(3, 3, 3)] && !f[at(0, 0, 0)]);
        // a hole opened to the outside through one face voxel stays open
        m[at(3, 3, 1)] = false;
        let f = fill_holes(&m, dims);
        assert!(!f[at(3, 3, 3)]);
        assert_eq!(f, m);
    }
}
