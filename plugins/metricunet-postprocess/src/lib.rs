//! Post-processing steps for stage 2's mask, registered by name (`postprocess:` in an
//! experiment, in order): `largest-component` keeps the largest 6-connected component,
//! `fill-holes` fills background enclosed in 3D. Both work on the mask on the CT's grid and
//! use the one connected-component labelling of `metricunet_core::mask`.

mod fill_holes;
mod largest_component;

/// Call from a binary to make sure this crate (and its registrations) is linked.
pub fn link() {}
