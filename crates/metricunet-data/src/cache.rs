//! On-disk cache of preprocessed cases, keyed by the input files (path, size, modification
//! time) and every preprocessing parameter, so a changed file or setting is never served
//! stale. Entries are written atomically and end in a checksum of their content (FNV-1a 64 of
//! every byte before it): an unreadable or altered entry is recomputed with a warning, never
//! trained on.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dataset::{load_case, Case};
use crate::error::{DataError, Result};
use crate::preprocess::{preprocess, PreprocessParams, Preprocessed};
use crate::volume::{Geometry, Volume};

const MAGIC: &[u8; 8] = b"MUNETPP2";
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// A folder of cached preprocessed cases.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn file_fingerprint(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(format!("{}|{}|{mtime}", canon.display(), meta.len()))
}

impl Cache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        metricunet_core::fsio::remove_temporaries(&dir, false);
        Self { dir }
    }

    /// The key of `case` preprocessed with `params` and `label_map`.
    pub fn key(
        case: &Case,
        params: &PreprocessParams,
        label_map: &BTreeMap<i64, u8>,
    ) -> Result<String> {
        let mut text = format!(
            "{}|{}|{label_map:?}|",
            file_fingerprint(&case.image)?,
            params.fingerprint()
        );
        if let Some(l) = &case.label {
            text.push_str(&file_fingerprint(l)?);
        }
        Ok(format!(
            "{}-{:016x}",
            case.id,
            fnv(text.as_bytes(), FNV_OFFSET)
        ))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.mupp"))
    }

    /// The cached entry, or `None` when absent or unreadable (logged).
    pub fn load(&self, key: &str) -> Option<Preprocessed> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        match decode(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(
                    "cache entry {}: {e}; the case is preprocessed again",
                    path.display()
                );
                None
            }
        }
    }

    /// Store an entry (temporary file, then rename).
    pub fn store(&self, key: &str, p: &Preprocessed) -> Result<()> {
        Ok(metricunet_core::fsio::write_atomic(
            &self.path(key),
            &encode(p),
        )?)
    }
}

fn put_geometry(out: &mut Vec<u8>, g: &Geometry) {
    for d in g.dims {
        out.extend((d as u64).to_le_bytes());
    }
    for s in g.spacing {
        out.extend(s.to_le_bytes());
    }
    for row in g.affine {
        for v in row {
            out.extend(v.to_le_bytes());
        }
    }
}

fn encode(p: &Preprocessed) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + p.image.data.len() * 5);
    out.extend(MAGIC);
    put_geometry(&mut out, &p.original);
    put_geometry(&mut out, &p.resampled);
    put_geometry(&mut out, &p.image.geometry);
    for o in p.crop_offset {
        out.extend(o.to_le_bytes());
    }
    out.push(u8::from(p.label.is_some()));
    for v in &p.image.data {
        out.extend(v.to_le_bytes());
    }
    if let Some(l) = &p.label {
        out.extend(&l.data);
    }
    let sum = fnv(&out, FNV_OFFSET);
    out.extend(sum.to_le_bytes());
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.0
            .read_exact(&mut b)
            .map_err(|_| DataError::Invalid("truncated cache entry".into()))?;
        Ok(b)
    }
    fn geometry(&mut self) -> Result<Geometry> {
        let mut dims = [0usize; 3];
        for d in dims.iter_mut() {
            *d = usize::try_from(u64::from_le_bytes(self.take()?))
                .map_err(|_| DataError::Invalid("bad dims".into()))?;
        }
        let mut spacing = [0f64; 3];
        for s in spacing.iter_mut() {
            *s = f64::from_le_bytes(self.take()?);
        }
        let mut affine = [[0f64; 4]; 4];
        for row in affine.iter_mut() {
            for v in row.iter_mut() {
                *v = f64::from_le_bytes(self.take()?);
            }
        }
        Ok(Geometry {
            dims,
            spacing,
            affine,
        })
    }
}

fn decode(bytes: &[u8]) -> Result<Preprocessed> {
    if bytes.len() < MAGIC.len() + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(DataError::Invalid(
            "not a metricunet cache entry of this version".into(),
        ));
    }
    let (content, sum) = bytes.split_at(bytes.len() - 8);
    let stored = u64::from_le_bytes(sum.try_into().unwrap_or_default());
    let computed = fnv(content, FNV_OFFSET);
    if stored != computed {
        return Err(DataError::Invalid(format!(
            "checksum mismatch (stored {stored:016x}, content {computed:016x}): the entry was altered or damaged"
        )));
    }
    let mut r = Reader(&content[MAGIC.len()..]);
    let original = r.geometry()?;
    let resampled = r.geometry()?;
    let crop = r.geometry()?;
    let mut crop_offset = [0i64; 3];
    for o in crop_offset.iter_mut() {
        *o = i64::from_le_bytes(r.take()?);
    }
    let has_label = r.take::<1>()?[0] == 1;
    let n = crop.len();
    let want = n * 4 + if has_label { n } else { 0 };
    if r.0.len() != want {
        return Err(DataError::Invalid(format!(
            "cache entry holds {} data bytes, expected {want}",
            r.0.len()
        )));
    }
    let data: Vec<f32> = r.0[..n * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let label = has_label.then(|| Volume {
        data: r.0[n * 4..].to_vec(),
        geometry: crop.clone(),
    });
    Ok(Preprocessed {
        image: Volume {
            data,
            geometry: crop,
        },
        label,
        resampled,
        crop_offset,
        original,
    })
}

/// Read, check and preprocess a case, through the cache when one is given.
pub fn load_preprocessed(
    case: &Case,
    label_map: &BTreeMap<i64, u8>,
    params: &PreprocessParams,
    cache: Option<&Cache>,
) -> Result<Preprocessed> {
    let key = match cache {
        Some(_) => Some(Cache::key(case, params, label_map)?),
        None => None,
    };
    if let (Some(c), Some(k)) = (cache, &key) {
        if let Some(p) = c.load(k) {
            tracing::debug!("{}: preprocessed volume from the cache", case.id);
            return Ok(p);
        }
    }
    let loaded = load_case(case, label_map)?;
    let p = preprocess(&loaded.image.volume, loaded.label.as_ref(), params)
        .map_err(|e| DataError::bad(&case.image, e.to_string()))?;
    if let (Some(before), Some(after), Some(path)) = (&loaded.label, &p.label, &case.label) {
        if !after.data.iter().any(|&v| v != 0) {
            let n = before.data.iter().filter(|&&v| v != 0).count();
            return Err(DataError::bad(
                path,
                format!(
                    "case {}: the foreground ({n} voxels at {:?} mm) vanishes when resampled to {:?} mm; use a finer data.spacing_mm or leave the case out",
                    case.id, before.geometry.spacing, params.spacing_mm
                ),
            ));
        }
    }
    if let (Some(c), Some(k)) = (cache, &key) {
        c.store(k, &p)?;
    }
    Ok(p)
}

/// Preprocessed cases, and the cases skipped with the reason.
pub type Loaded = (Vec<(Case, Preprocessed)>, Vec<(Case, String)>);

/// Preprocess every case; with `skip_bad`, a case that fails is logged and listed instead
/// of stopping the run.
pub fn load_all(
    cases: &[Case],
    label_map: &BTreeMap<i64, u8>,
    params: &PreprocessParams,
    cache: Option<&Cache>,
    skip_bad: bool,
) -> Result<Loaded> {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for case in cases {
        match load_preprocessed(case, label_map, params, cache) {
            Ok(p) => ok.push((case.clone(), p)),
            Err(e) if skip_bad => {
                tracing::warn!("skipping case {}: {e}", case.id);
                skipped.push((case.clone(), e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((ok, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phantom::{write_dataset, PhantomSize};

    /// `n` small phantom cases (64 x 64 x 16) of `seed` in a temporary folder.
    fn phantom_cases(n: usize, seed: u64) -> (tempfile::TempDir, Vec<Case>) {
        let dir = tempfile::tempdir().expect("tmp");
        let size = PhantomSize {
            in_plane: 64,
            slices: 16,
        };
        let cases = write_dataset(&dir.path().join("data"), n, seed, &size, &|_| {}).expect("data");
        (dir, cases)
    }

    #[test]
    fn cache_round_trip_invalidation_and_skipping() {
        let (dir, mut cases) = phantom_cases(2, 1);
        let map = BTreeMap::from([(1, 1)]);
        let params = PreprocessParams {
            spacing_mm: [4.0, 4.0, 4.0],
            ..Default::default()
        };
        let cache = Cache::new(dir.path().join("cache"));
        let fresh = load_preprocessed(&cases[0], &map, &params, Some(&cache)).expect("first");
        let key = Cache::key(&cases[0], &params, &map).expect("key");
        let cached = cache.load(&key).expect("stored");
        assert_eq!(cached.image, fresh.image);
        assert_eq!(cached.label, fresh.label);
        assert_eq!(
            (cached.crop_offset, &cached.resampled, &cached.original),
            (fresh.crop_offset, &fresh.resampled, &fresh.original)
        );
        // other parameters, other key
        let other = PreprocessParams {
            hu_window: [-200.0, 300.0],
            ..params.clone()
        };
        assert_ne!(key, Cache::key(&cases[0], &other, &map).expect("key"));
        // a corrupt entry is ignored and rewritten
        std::fs::write(cache.path(&key), b"MUNETPP1garbage").expect("corrupt");
        assert!(cache.load(&key).is_none());
        let again = load_preprocessed(&cases[0], &map, &params, Some(&cache)).expect("recomputed");
        assert_eq!(again.image, fresh.image);
        assert!(cache.load(&key).is_some());
        // a broken case: listed when skipping, an error naming the file otherwise
        std::fs::write(&cases[1].image, b"broken").expect("break");
        cases.push(cases[1].clone());
        let (ok, skipped) = load_all(&cases[..2], &map, &params, None, true).expect("skip");
        assert_eq!((ok.len(), skipped.len()), (1, 1));
        assert!(
            skipped[0].1.contains("phantom_001.nii.gz"),
            "{}",
            skipped[0].1
        );
        let e = load_all(&cases[..2], &map, &params, None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("phantom_001.nii.gz"), "{e}");
    }

    #[test]
    fn altered_entries_are_recomputed_never_trained_on() {
        let (dir, cases) = phantom_cases(1, 3);
        let map = BTreeMap::from([(1, 1)]);
        let params = PreprocessParams {
            spacing_mm: [4.0, 4.0, 4.0],
            ..Default::default()
        };
        let cache = Cache::new(dir.path().join("cache"));
        let fresh = load_preprocessed(&cases[0], &map, &params, Some(&cache)).expect("first");
        let key = Cache::key(&cases[0], &params, &map).expect("key");
        let path = cache.path(&key);
        let good = std::fs::read(&path).expect("entry");
        // one bit of the data section (image voxels), of the label and of the header
        for at in [good.len() / 2, good.len() - 9, 20] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).expect("flip");
            assert!(cache.load(&key).is_none(), "bit {at} flipped was served");
            let again = load_preprocessed(&cases[0], &map, &params, Some(&cache)).expect("again");
            assert_eq!(again.image, fresh.image);
            assert_eq!(std::fs::read(&path).expect("rewritten"), good);
        }
    }

    #[test]
    fn a_label_that_vanishes_on_resampling_names_the_case_and_can_be_skipped() {
        let (_dir, cases) = phantom_cases(2, 5);
        // a one-voxel foreground (11 x 11 x 12.5 mm voxels) between the grid points of a 20 mm resampling
        let label_path = cases[1].label.clone().expect("label");
        let mut label = crate::io::read_nifti(&label_path).expect("read").volume;
        label.data.iter_mut().for_each(|v| *v = 0.0);
        let [nx, ny, _] = label.geometry.dims;
        label.data[(3 * ny + 33) * nx + 33] = 1.0;
        let label = label.map(|v| v as u8);
        crate::io::write_nifti(&label_path, &label, None).expect("write");
        let map = BTreeMap::from([(1, 1)]);
        let params = PreprocessParams {
            spacing_mm: [20.0, 20.0, 20.0],
            ..Default::default()
        };
        let e = load_all(&cases, &map, &params, None, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("case phantom_001") && e.contains("vanishes when resampled"),
            "{e}"
        );
        let (ok, skipped) = load_all(&cases, &map, &params, None, true).expect("skip");
        assert_eq!((ok.len(), skipped.len()), (1, 1));
        assert_eq!(skipped[0].0.id, "phantom_001");
    }
}
