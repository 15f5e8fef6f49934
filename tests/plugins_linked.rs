//! Every plugin crate is linked into the binary and its names are found in the registry.

mod common;

use metricunet_core::registry::{self, PluginKind};

const EXPECTED: &[(PluginKind, &[&str])] = &[
    (
        PluginKind::Sampler,
        &["contour-aware", "hard-negative", "random"],
    ),
    (PluginKind::Loss, &["triplet-pair"]),
    (
        PluginKind::SegLoss,
        &["boundary", "cross-entropy", "dice", "focal"],
    ),
    (
        PluginKind::Backbone,
        &["metricunet", "metricunet-sep", "unet", "unet-light"],
    ),
];

#[test]
fn registry_finds_every_plugin_in_process() {
    metricunet::link_plugins();
    for (kind, names) in EXPECTED {
        let listed: Vec<&str> = registry::list(*kind).iter().map(|p| p.name).collect();
        for name in *names {
            assert!(
                listed.contains(name),
                "{} `{name}` not registered: {listed:?}",
                kind.name()
            );
        }
    }
    assert!(registry::sampler("random", "x").is_ok());
    assert!(registry::loss("triplet-pair", "x").is_ok());
    assert!(registry::backbone("metricunet-sep", "x").is_ok());
    assert!(
        registry::duplicates().is_empty(),
        "{:?}",
        registry::duplicates()
    );
    let e = registry::sampler("hard-negatve", "metric.samplers[0]")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("metric.samplers[0]") && e.contains("did you mean `hard-negative`"),
        "{e}"
    );
}

#[test]
fn binary_lists_every_plugin_with_defaults() {
    let (ok, text, stderr) = common::cli(&["plugins"]);
    assert!(ok, "{stderr}");
    for (_, names) in EXPECTED {
        for name in *names {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{name} "))),
                "`{name}` missing:\n{text}"
            );
        }
    }
    // parameters with their defaults
    assert!(
        text.contains("tau") && text.contains("default 0.1"),
        "{text}"
    );
    assert!(
        text.contains("sigma") && text.contains("default 0.7"),
        "{text}"
    );
    // the segmentation losses have their own section; presets are listed with what they set
    assert!(text.contains("segmentation-losses (4)"), "{text}");
    for preset in [
        "metricunet-hcr",
        "unet-dice",
        "unet-ce-dice",
        "unet-boundary",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{preset} "))),
            "preset `{preset}` missing:\n{text}"
        );
    }
    assert!(
        text.contains("segmentation loss 1 dice + 0.01 boundary"),
        "{text}"
    );
}
