// A sampler defined outside the metricunet repository's crates (the README's example): it
// registers itself by name, so experiments run by this crate's binary can use it.

use metricunet_core::{register_sampler, Draw, Result, SampleItem, Sampler};

/// Anchors deep inside the organ: foreground voxels whose 4 neighbours are foreground too.
#[derive(Debug)]
struct InteriorSampler(Draw);

impl Sampler for InteriorSampler {
    fn draw(&self) -> Draw {
        self.0
    }
    fn candidates(&self, item: &SampleItem<'_>) -> Result<Vec<usize>> {
        let (h, w) = item.dims();
        let fg = |v: usize| item.is_foreground(v);
        let inside = |v: usize| (1..h - 1).contains(&(v / w)) && (1..w - 1).contains(&(v % w));
        let around = |v: usize| [v, v - 1, v + 1, v - w, v + w];
        Ok((0..h * w)
            .filter(|&v| inside(v) && around(v).into_iter().all(fg))
            .collect())
    }
}

register_sampler!("interior", "anchors away from the boundary", |d, _| Ok(
    InteriorSampler(d)
));
