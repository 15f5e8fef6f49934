//! `contour-aware`: anchors drawn on the reference boundary (paper Fig. 5c): foreground
//! voxels with at least one background 4-neighbour in the same slice. Neighbours outside
//! the image do not count as background, so a patch edge cutting through the organ is not
//! a contour.

use metricunet_core::{register_sampler, Draw, Result, SampleItem, Sampler};

/// Contour-aware sampling: `k` anchors on the reference boundary per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContourAwareSampler(pub Draw);

/// Foreground voxels of an `h x w` slice that have a background 4-neighbour inside it.
pub fn boundary_voxels(labels: &[u8], h: usize, w: usize) -> Vec<usize> {
    let bg = |y: usize, x: usize| labels[y * w + x] == 0;
    (0..h * w)
        .filter(|&v| {
            let (y, x) = (v / w, v % w);
            labels[v] != 0
                && ((y > 0 && bg(y - 1, x))
                    || (y + 1 < h && bg(y + 1, x))
                    || (x > 0 && bg(y, x - 1))
                    || (x + 1 < w && bg(y, x + 1)))
        })
        .collect()
}

impl Sampler for ContourAwareSampler {
    fn draw(&self) -> Draw {
        self.0
    }
    fn candidates(&self, item: &SampleItem<'_>) -> Result<Vec<usize>> {
        let (h, w) = item.dims();
        Ok(boundary_voxels(item.labels, h, w))
    }
}

register_sampler!(
    "contour-aware",
    "anchors on the reference boundary: foreground with a background 4-neighbour (paper Fig. 5c)",
    |draw, _| Ok(ContourAwareSampler(draw)),
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_labels, draw, square};

    #[test]
    fn boundary_of_a_square_is_its_ring() {
        let labels = square(); // rows/cols 2..6 of 8x8
        let b = boundary_voxels(&labels, 8, 8);
        // 4x4 square: 12 ring voxels, the 2x2 interior (rows/cols 3..5) excluded
        assert_eq!(b.len(), 12);
        for v in [27, 28, 35, 36] {
            assert!(!b.contains(&v));
        }
        assert!(b.contains(&18) && b.contains(&21) && b.contains(&42) && b.contains(&45));
    }

    #[test]
    fn image_edges_are_not_contours() {
        // left half foreground: only column 3 touches background
        let labels: Vec<u8> = (0..64).map(|i| u8::from(i % 8 < 4)).collect();
        let b = boundary_voxels(&labels, 8, 8);
        assert_eq!(b, (0..8).map(|y| y * 8 + 3).collect::<Vec<_>>());
        assert!(boundary_voxels(&[1; 64], 8, 8).is_empty());
        assert!(boundary_voxels(&[0; 64], 8, 8).is_empty());
    }

    #[test]
    fn anchors_on_contour_only() {
        let labels = square();
        let ring = boundary_voxels(&labels, 8, 8);
        let t = draw(
            &ContourAwareSampler(Draw { k: 5, m: 3 }),
            &labels,
            None,
            1,
            8,
            8,
            2,
        );
        assert_eq!(t.len(), 5);
        assert!(t.anchors.iter().all(|a| ring.contains(a)));
        assert_labels(&t, &labels);
    }
}
