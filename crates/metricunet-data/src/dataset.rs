//! Datasets: a Medical Segmentation Decathlon folder or an explicit list of cases, loaded
//! with checks that name the file at fault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::io::{read_nifti, NiftiVolume};
use crate::volume::Volume;

/// One case on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub id: String,
    pub image: PathBuf,
    /// Reference label map, when the case has one.
    pub label: Option<PathBuf>,
}

/// The file name without `.nii` / `.nii.gz`.
pub fn case_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .to_string()
}

fn is_nifti(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    !n.starts_with('.') && (n.ends_with(".nii") || n.ends_with(".nii.gz"))
}

/// The cases of a Decathlon-layout folder: every NIfTI in `imagesTr/`, with the label of
/// the same name in `labelsTr/` (nnU-Net's `_0000` channel suffix on images is understood).
pub fn discover_msd(root: &Path) -> Result<Vec<Case>> {
    let images = root.join("imagesTr");
    let labels = root.join("labelsTr");
    let entries = std::fs::read_dir(&images).map_err(|e| DataError::io(&images, e))?;
    let mut cases = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(&images, e))?.path();
        if !is_nifti(&path) {
            continue;
        }
        let mut id = case_id(&path);
        if let Some(stripped) = id.strip_suffix("_0000") {
            id = stripped.to_string();
        }
        let ext = if path.to_string_lossy().ends_with(".gz") {
            "nii.gz"
        } else {
            "nii"
        };
        let label = [
            labels.join(format!("{id}.{ext}")),
            labels.join(format!("{id}.nii.gz")),
            labels.join(format!("{id}.nii")),
        ]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| {
            DataError::bad(
                &path,
                format!("no label named {id}.nii(.gz) in {}", labels.display()),
            )
        })?;
        cases.push(Case {
            id,
            image: path,
            label: Some(label),
        });
    }
    if cases.is_empty() {
        return Err(DataError::bad(&images, "no .nii or .nii.gz image found"));
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(cases)
}

/// A case read and checked: the CT in HU and the binary label after the label map.
#[derive(Debug, Clone)]
pub struct LoadedCase {
    pub case: Case,
    pub image: NiftiVolume,
    pub label: Option<Volume<u8>>,
}

/// Map a label volume through `label_map` (source label -> 1/0; unmapped -> 0).
pub fn map_labels(
    raw: &Volume<f32>,
    label_map: &BTreeMap<i64, u8>,
    path: &Path,
) -> Result<Volume<u8>> {
    if let Some(v) = raw.data.iter().find(|v| !v.is_finite() || v.fract() != 0.0) {
        return Err(DataError::bad(
            path,
            format!("label maps hold integers, found {v}"),
        ));
    }
    Ok(raw.map(|v| {
        label_map
            .get(&(v as i64))
            .copied()
            .map(|t| u8::from(t != 0))
            .unwrap_or(0)
    }))
}

/// Read a case and check it: image and label on the same grid (shape and affine within
/// 1e-3 mm), finite intensities, integer labels, a non-empty foreground.
pub fn load_case(case: &Case, label_map: &BTreeMap<i64, u8>) -> Result<LoadedCase> {
    let image = read_nifti(&case.image)?;
    if let Some(v) = image.volume.data.iter().find(|v| !v.is_finite()) {
        return Err(DataError::bad(
            &case.image,
            format!("image holds a non-finite value ({v})"),
        ));
    }
    let label = match &case.label {
        None => None,
        Some(path) => {
            let raw = read_nifti(path)?;
            let (gi, gl) = (&image.volume.geometry, &raw.volume.geometry);
            if gi.dims != gl.dims {
                return Err(DataError::bad(
                    path,
                    format!(
                        "label dims {:?} differ from image dims {:?} ({})",
                        gl.dims,
                        gi.dims,
                        case.image.display()
                    ),
                ));
            }
            let d = gi.affine_distance(gl);
            if d > 1e-3 {
                return Err(DataError::bad(
                    path,
                    format!(
                        "label affine differs from the image's by {d:.4} mm ({})",
                        case.image.display()
                    ),
                ));
            }
            let mapped = map_labels(&raw.volume, label_map, path)?;
            if !mapped.data.iter().any(|&v| v != 0) {
                let keys: Vec<String> = label_map
                    .iter()
                    .filter(|(_, &v)| v != 0)
                    .map(|(k, _)| k.to_string())
                    .collect();
                return Err(DataError::bad(
                    path,
                    format!(
                        "empty foreground: no voxel with label {}",
                        keys.join(" or ")
                    ),
                ));
            }
            Some(mapped)
        }
    };
    Ok(LoadedCase {
        case: case.clone(),
        image,
        label,
    })
}

/// Cases resolved from an explicit list; relative paths are taken from `base`.
pub fn from_list(entries: &[(Option<String>, PathBuf, PathBuf)], base: &Path) -> Vec<Case> {
    entries
        .iter()
        .map(|(id, image, label)| {
            let image = if image.is_absolute() {
                image.clone()
            } else {
                base.join(image)
            };
            let label = if label.is_absolute() {
                label.clone()
            } else {
                base.join(label)
            };
            Case {
                id: id.clone().unwrap_or_else(|| case_id(&image)),
                image,
                label: Some(label),
            }
        })
        .collect()
}

/// The cases an experiment's `data:` section names. Relative paths are taken from
/// `base_dir` (the experiment file's folder); a phantom dataset is generated once into
/// `work_dir/phantom-s<seed>-n<cases>/` and reused while every file is there.
pub fn cases_for(
    cfg: &metricunet_core::config::DataConfig,
    base_dir: &Path,
    work_dir: &Path,
) -> Result<Vec<Case>> {
    use metricunet_core::config::DataSource;
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    match cfg.source {
        DataSource::Msd => {
            let root = cfg.root.as_ref().ok_or_else(|| {
                DataError::Invalid("data.root: `source: msd` needs a folder".into())
            })?;
            discover_msd(&resolve(root))
        }
        DataSource::List => {
            if cfg.cases.is_empty() {
                return Err(DataError::Invalid(
                    "data.cases: `source: list` needs at least one case".into(),
                ));
            }
            let entries: Vec<(Option<String>, PathBuf, PathBuf)> = cfg
                .cases
                .iter()
                .map(|c| (c.id.clone(), c.image.clone(), c.label.clone()))
                .collect();
            let cases = from_list(&entries, base_dir);
            let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
            ids.sort_unstable();
            if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
                return Err(DataError::Invalid(format!(
                    "data.cases: case id `{}` appears twice; give `id:` to tell them apart",
                    w[0]
                )));
            }
            Ok(cases)
        }
        DataSource::Phantom => {
            let (n, seed) = (cfg.phantom.cases, cfg.phantom.seed);
            let size = crate::phantom::PhantomSize {
                in_plane: cfg.phantom.in_plane,
                slices: cfg.phantom.slices,
            };
            let dir = work_dir.join(format!(
                "phantom-s{seed}-n{n}-{}x{}",
                size.in_plane, size.slices
            ));
            // what a killed generator left is removed first (the rest is checked whole)
            metricunet_core::fsio::remove_temporaries(&dir, true);
            if let Ok(found) = discover_msd(&dir) {
                if found.len() == n && dir.join("dataset.json").exists() {
                    return Ok(found);
                }
            }
            tracing::info!(
                "generating {n} phantom cases (seed {seed}) in {}",
                dir.display()
            );
            crate::phantom::write_dataset(&dir, n, seed, &size, &|_| {})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::write_nifti;
    use crate::volume::Geometry;

    fn write_case(dir: &Path, id: &str, label_value: f32, shift: f64) {
        let g = Geometry::axis_aligned([6, 6, 4], [1.0, 1.0, 2.0]);
        let img = Volume::filled(30.0f32, g.clone());
        let mut lg = g.clone();
        lg.affine[0][3] += shift;
        let mut lab = Volume::filled(0.0f32, lg);
        lab.data[40] = label_value;
        write_nifti(
            &dir.join("imagesTr").join(format!("{id}_0000.nii.gz")),
            &img,
            None,
        )
        .expect("img");
        write_nifti(
            &dir.join("labelsTr").join(format!("{id}.nii.gz")),
            &lab,
            None,
        )
        .expect("lab");
    }

    #[test]
    fn msd_layout_and_checks() {
        let dir = tempfile::tempdir().expect("tmp");
        write_case(dir.path(), "b", 22.0, 0.0);
        write_case(dir.path(), "a", 22.0, 0.0);
        write_case(dir.path(), "shifted", 22.0, 0.5);
        write_case(dir.path(), "empty", 21.0, 0.0);
        let cases = discover_msd(dir.path()).expect("discover");
        assert_eq!(
            cases.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "empty", "shifted"]
        );
        let map = BTreeMap::from([(22, 1)]);
        let a = load_case(&cases[0], &map).expect("a");
        assert_eq!(
            a.label
                .as_ref()
                .map(|l| l.data.iter().filter(|&&v| v == 1).count()),
            Some(1)
        );
        let e = load_case(&cases[2], &map).unwrap_err().to_string();
        assert!(
            e.contains("empty.nii.gz") && e.contains("empty foreground") && e.contains("22"),
            "{e}"
        );
        let e = load_case(&cases[3], &map).unwrap_err().to_string();
        assert!(e.contains("shifted.nii.gz") && e.contains("affine"), "{e}");
        let e = discover_msd(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn cases_for_each_source() {
        use metricunet_core::config::{CaseEntry, DataConfig, DataSource};
        let dir = tempfile::tempdir().expect("tmp");
        write_case(dir.path(), "a", 1.0, 0.0);
        let msd = DataConfig {
            source: DataSource::Msd,
            root: Some("data".into()),
            ..Default::default()
        };
        std::fs::create_dir_all(dir.path().join("exp")).expect("mkdir");
        std::fs::rename(dir.path().join("imagesTr"), dir.path().join("exp/imagesTr")).expect("mv");
        std::fs::rename(dir.path().join("labelsTr"), dir.path().join("exp/labelsTr")).expect("mv");
        let msd = DataConfig {
            root: Some(".".into()),
            ..msd
        };
        let found = cases_for(&msd, &dir.path().join("exp"), dir.path()).expect("msd");
        assert_eq!(found.len(), 1);
        let entry = CaseEntry {
            id: None,
            image: "imagesTr/a_0000.nii.gz".into(),
            label: "labelsTr/a.nii.gz".into(),
        };
        let list = DataConfig {
            source: DataSource::List,
            cases: vec![entry.clone(), entry],
            ..Default::default()
        };
        let e = cases_for(&list, &dir.path().join("exp"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("appears twice"), "{e}");
        let mut ph = DataConfig::default();
        ph.phantom.cases = 2;
        ph.phantom.in_plane = 48;
        ph.phantom.slices = 12;
        let made = cases_for(&ph, dir.path(), &dir.path().join("work")).expect("phantom");
        assert_eq!(made.len(), 2);
        assert!(made[0]
            .image
            .starts_with(dir.path().join("work/phantom-s0-n2-48x12")));
        let before = std::fs::metadata(&made[0].image)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(
            cases_for(&ph, dir.path(), &dir.path().join("work")).expect("reuse"),
            made
        );
        assert_eq!(
            std::fs::metadata(&made[0].image)
                .and_then(|m| m.modified())
                .expect("mtime"),
            before
        );
        let bad = DataConfig {
            source: DataSource::Msd,
            root: Some("missing".into()),
            ..Default::default()
        };
        assert!(cases_for(&bad, dir.path(), dir.path())
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }

    #[test]
    fn non_finite_images_and_fractional_labels_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let g = Geometry::axis_aligned([4, 4, 4], [1.0; 3]);
        let mut img = Volume::filled(0.0f32, g.clone());
        img.data[3] = f32::NAN;
        let mut lab = Volume::filled(0.0f32, g);
        lab.data[5] = 1.5;
        let (ip, lp) = (dir.path().join("i.nii"), dir.path().join("l.nii"));
        write_nifti(&ip, &img, None).expect("w");
        write_nifti(&lp, &lab, None).expect("w");
        let case = Case {
            id: "i".into(),
            image: ip,
            label: Some(lp.clone()),
        };
        let e = load_case(&case, &BTreeMap::from([(1, 1)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("i.nii") && e.contains("non-finite"), "{e}");
        let raw = read_nifti(&lp).expect("read");
        let e = map_labels(&raw.volume, &BTreeMap::from([(1, 1)]), &lp)
            .unwrap_err()
            .to_string();
        assert!(e.contains("l.nii") && e.contains("1.5"), "{e}");
    }
}
