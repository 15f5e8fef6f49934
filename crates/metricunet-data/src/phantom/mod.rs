//! The built-in synthetic pelvic CT ("phantom"): volumes in Hounsfield units with a label map,
//! made to be as hard as the paper describes (low soft-tissue contrast around the prostate,
//! fuzzy boundaries, large variation between subjects).
//!
//! Anatomy, in patient millimetres (x: right to left, y: anterior to posterior, z: inferior
//! to superior), centred near the prostate:
//! - body: elliptic cross-section (skin, subcutaneous fat about -100 HU, muscle 40-60 HU),
//!   air outside (-1000 HU) and a patient couch below;
//! - pelvic bones: femoral heads and shafts, pubic symphysis and rami, ischia, sacrum and
//!   iliac wings, each a cortical shell (700-1200 HU) around cancellous bone (150-350 HU);
//! - bladder: water-like (0-20 HU) with a wall, above and in front of the prostate, its size
//!   set by a random filling;
//! - rectum: behind the prostate, a muscular wall around content that holds gas (-1000 HU) in
//!   some subjects;
//! - prostate: a smooth, randomly deformed (non-ellipsoidal) body only a few HU brighter than
//!   the periprostatic tissue around it, with a soft intensity transition;
//! - per subject: body size, prostate size and position, bladder filling, in-plane spacing
//!   0.9-1.4 mm and slice thickness 1-3 mm, noise level and blur.
//!
//! Labels: 1 prostate, 2 bladder, 3 rectum, 4 bone, 5 fat, 0 everything else; `label_map:
//! {1: 1}` selects the prostate. Generation is deterministic for a seed and parallel over
//! slices.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::volume::{Geometry, Volume};

/// Label values of the phantom.
pub mod labels {
    pub const PROSTATE: u8 = 1;
    pub const BLADDER: u8 = 2;
    pub const RECTUM: u8 = 3;
    pub const BONE: u8 = 4;
    pub const FAT: u8 = 5;
}

/// Size of the generated grid. The field of view stays that of a 512 x 512 x 100 scan at
/// the paper's spacings: a smaller grid gets proportionally coarser voxels (for tests).
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomSize {
    /// In-plane voxels (paper data: 512).
    pub in_plane: usize,
    /// Slices (about; each subject varies by +-10 %).
    pub slices: usize,
}

impl PhantomSize {
    fn voxel_scale(&self) -> [f64; 2] {
        [
            512.0 / self.in_plane.max(1) as f64,
            100.0 / self.slices.max(1) as f64,
        ]
    }
}

impl Default for PhantomSize {
    fn default() -> Self {
        Self {
            in_plane: 512,
            slices: 100,
        }
    }
}

/// Random parameters of one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub spacing: [f64; 3],
    pub dims: [usize; 3],
    /// Body semi-axes (lateral, anterior-posterior) in mm.
    pub body: [f64; 2],
    pub fat_thickness: f64,
    pub prostate_center: [f64; 3],
    pub prostate_radii: [f64; 3],
    /// Coefficients of the cubic surface deformation.
    pub prostate_shape: [f64; 19],
    pub prostate_hu: f64,
    pub periprostatic_hu: f64,
    pub muscle_hu: f64,
    pub fat_hu: f64,
    pub bladder_center: [f64; 3],
    pub bladder_radii: [f64; 3],
    pub bladder_hu: f64,
    pub rectum_radius: f64,
    pub rectum_gas: bool,
    pub femoral_head_radius: f64,
    pub noise_hu: f64,
    pub blur_passes: usize,
    /// Plane waves `[amplitude, kx, ky, kz, phase]` of the soft-tissue texture.
    pub texture_waves: [[f64; 5]; 6],
}

impl Subject {
    /// Draw a subject.
    pub fn random(rng: &mut ChaCha8Rng, size: &PhantomSize) -> Self {
        let [fx, fz] = size.voxel_scale();
        let inplane = rng.random_range(0.9..1.4) * fx;
        let thickness = [1.0, 1.5, 2.0, 2.5, 3.0][rng.random_range(0..5)] * fz;
        let nz = ((size.slices as f64) * rng.random_range(0.9..1.1))
            .round()
            .max(8.0) as usize;
        let scale = rng.random_range(0.85..1.2);
        let p_scale = rng.random_range(0.75..1.35);
        let z_extent = nz as f64 * thickness;
        let pz = rng.random_range(-0.15..0.1) * z_extent.min(150.0);
        let mut shape = [0.0; 19];
        for c in shape.iter_mut() {
            *c = rng.random_range(-0.09..0.09);
        }
        let filling = rng.random_range(0.3..1.0);
        let pr = [22.0 * p_scale, 17.0 * p_scale, 20.0 * p_scale];
        let br = [
            30.0 + 25.0 * filling,
            22.0 + 20.0 * filling,
            20.0 + 22.0 * filling,
        ];
        Self {
            spacing: [inplane, inplane, thickness],
            dims: [size.in_plane, size.in_plane, nz],
            body: [
                rng.random_range(165.0..205.0) * scale,
                rng.random_range(110.0..135.0) * scale,
            ],
            fat_thickness: rng.random_range(10.0..35.0) * scale,
            prostate_center: [rng.random_range(-6.0..6.0), rng.random_range(0.0..10.0), pz],
            prostate_radii: pr,
            prostate_shape: shape,
            prostate_hu: rng.random_range(10.0..30.0),
            periprostatic_hu: rng.random_range(0.0..22.0),
            muscle_hu: rng.random_range(40.0..60.0),
            fat_hu: rng.random_range(-110.0..-85.0),
            bladder_center: [
                rng.random_range(-5.0..5.0),
                -22.0 - 6.0 * filling,
                pz + pr[2] + br[2] * 0.75,
            ],
            bladder_radii: br,
            bladder_hu: rng.random_range(2.0..18.0),
            rectum_radius: rng.random_range(11.0..18.0),
            rectum_gas: rng.random_bool(0.5),
            femoral_head_radius: rng.random_range(21.0..26.0) * scale.sqrt(),
            noise_hu: rng.random_range(10.0..25.0),
            blur_passes: rng.random_range(1..3),
            texture_waves: std::array::from_fn(|_| {
                let k = std::f64::consts::TAU / rng.random_range(15.0..60.0);
                let d: [f64; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
                let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().max(1e-6);
                [
                    rng.random_range(1.0..4.0),
                    k * d[0] / n,
                    k * d[1] / n,
                    k * d[2] / n,
                    rng.random_range(0.0..std::f64::consts::TAU),
                ]
            }),
        }
    }

    /// Phantom coordinates (mm; y grows towards the back) of voxel `(i, j, k)`: the grid is
    /// centred in-plane on the body, the prostate about 40 % up the stack.
    pub fn position(&self, i: usize, j: usize, k: usize) -> [f64; 3] {
        let [nx, ny, nz] = self.dims;
        let [sx, sy, sz] = self.spacing;
        [
            (i as f64 - (nx as f64 - 1.0) / 2.0) * sx,
            (j as f64 - (ny as f64 - 1.0) / 2.0) * sy + 10.0,
            k as f64 * sz - nz as f64 * sz * 0.4,
        ]
    }

    /// The grid in NIfTI world coordinates (RAS+: y grows towards the front, so the index
    /// axis j, which runs towards the back, has a negative direction).
    pub fn geometry(&self) -> Geometry {
        let mut g = Geometry::axis_aligned(self.dims, self.spacing);
        let o = self.position(0, 0, 0);
        g.affine[0][3] = o[0];
        g.affine[1][1] = -self.spacing[1];
        g.affine[1][3] = -o[1];
        g.affine[2][3] = o[2];
        g
    }

    /// Normalised radius of the deformed prostate at `p` (< 1 inside; a lower bound of 2
    /// is returned far outside, where the exact value does not matter).
    fn prostate_radius(&self, p: [f64; 3]) -> f64 {
        let c = self.prostate_center;
        let r = self.prostate_radii;
        let far = 2.0 * 1.3 * r[0].max(r[1]).max(r[2]);
        let d2 = (p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2);
        if d2 > far * far {
            return 2.0;
        }
        let q = [
            (p[0] - c[0]) / r[0],
            (p[1] - c[1]) / r[1],
            (p[2] - c[2]) / r[2],
        ];
        let n = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
        if n == 0.0 {
            return 0.0;
        }
        let u = [q[0] / n, q[1] / n, q[2] / n];
        // Smooth radial deformation: every monomial of the unit direction up to degree 3.
        let m = [
            u[0],
            u[1],
            u[2],
            u[0] * u[0],
            u[1] * u[1],
            u[2] * u[2],
            u[0] * u[1],
            u[0] * u[2],
            u[1] * u[2],
            u[0] * u[0] * u[0],
            u[1] * u[1] * u[1],
            u[2] * u[2] * u[2],
            u[0] * u[0] * u[1],
            u[0] * u[0] * u[2],
            u[1] * u[1] * u[0],
            u[1] * u[1] * u[2],
            u[2] * u[2] * u[0],
            u[2] * u[2] * u[1],
            u[0] * u[1] * u[2],
        ];
        let d: f64 = m.iter().zip(&self.prostate_shape).map(|(a, b)| a * b).sum();
        n / (1.0 + d).clamp(0.7, 1.3)
    }
}

/// Tissue at one point: (HU before noise, label).
fn tissue(s: &Subject, p: [f64; 3]) -> (f64, u8) {
    let [x, y, z] = p;
    let pc = s.prostate_center;
    let zr = z - pc[2];
    // Body: the cross-section widens towards the iliac crest.
    let widen = 1.0 + 0.0015 * zr.clamp(-60.0, 120.0);
    let (a, b) = (s.body[0] * widen, s.body[1]);
    let e = (x / a).powi(2) + (y / b).powi(2);
    if e > 1.0 {
        // Couch below the patient: 8 mm of plastic, 15 mm under the back.
        if y > b + 15.0 && y < b + 23.0 && x.abs() < 230.0 {
            return (80.0, 0);
        }
        return (-1000.0, 0);
    }
    let depth = (1.0 - e.sqrt()) * a.min(b); // approximate distance below the skin
    if depth < 2.0 {
        return (25.0, 0);
    }
    if depth < 2.0 + s.fat_thickness {
        return (s.fat_hu, labels::FAT);
    }
    // Bones.
    let bone = |d_outside: f64| -> Option<(f64, u8)> {
        // d_outside: signed distance to the bone surface (negative inside)
        if d_outside > 0.0 {
            None
        } else if d_outside > -2.5 {
            Some((950.0, labels::BONE))
        } else {
            Some((250.0, labels::BONE))
        }
    };
    let fh = s.femoral_head_radius;
    for side in [-1.0, 1.0] {
        let (hx, hy, hz) = (side * (a * 0.52), 8.0, pc[2] + 12.0);
        let d = ((x - hx).powi(2) + (y - hy).powi(2) + (z - hz).powi(2)).sqrt() - fh;
        if let Some(t) = bone(d) {
            return t;
        }
        // femoral neck and shaft, going down and out
        if z < hz {
            let sx = hx + side * 0.35 * (hz - z).min(40.0);
            let d = ((x - sx).powi(2) + (y - hy).powi(2)).sqrt() - fh * 0.62;
            if let Some(t) = bone(d) {
                return t;
            }
        }
        // acetabular rim: a shell around the head, open below
        let r = ((x - hx).powi(2) + (y - hy).powi(2) + (z - hz).powi(2)).sqrt();
        if z > hz - 5.0 && r > fh + 3.0 && r < fh + 9.0 && (x - hx) * side < 5.0 {
            return bone(-3.0 + 0.0 * r).unwrap_or((s.muscle_hu, 0));
        }
        // superior pubic ramus: from the symphysis to the acetabulum
        let t = ((x * side) / (a * 0.52)).clamp(0.0, 1.0);
        let (rx, ry, rz) = (
            side * t * a * 0.52,
            -0.62 * b + t * (0.62 * b + 8.0),
            pc[2] + 10.0,
        );
        if (x * side) > 0.0 && (x * side) < a * 0.52 {
            let d = ((y - ry).powi(2) + (z - rz).powi(2)).sqrt() - 9.0;
            if let Some(tb) = bone(d) {
                let _ = rx;
                return tb;
            }
        }
        // ischium: a bar behind and beside the prostate, below the heads
        let d = ((x - side * a * 0.33).powi(2) + (y - 0.3 * b).powi(2)).sqrt() - 11.0;
        if z < hz && z > pc[2] - 45.0 {
            if let Some(t) = bone(d) {
                return t;
            }
        }
        // iliac wing: a curved plate above the heads
        if z > hz + 15.0 {
            let r = ((x / (a * 0.75)).powi(2) + ((y - 0.2 * b) / (b * 0.75)).powi(2)).sqrt();
            if (r - 1.0).abs() * a * 0.75 < 5.0 && y < 0.7 * b && x * side > a * 0.3 {
                return bone(-3.0).unwrap_or((s.muscle_hu, 0));
            }
        }
    }
    // pubic symphysis
    let d =
        ((x / 14.0).powi(2) + ((y + 0.62 * b) / 10.0).powi(2) + ((z - pc[2] - 5.0) / 22.0).powi(2))
            .sqrt();
    if d < 1.0 {
        return if d > 0.75 {
            (900.0, labels::BONE)
        } else {
            (260.0, labels::BONE)
        };
    }
    // sacrum / coccyx
    let sy = 0.78 * b - 0.25 * (zr - 30.0).max(0.0);
    let d = ((x / 28.0).powi(2) + ((y - sy) / 16.0).powi(2)).sqrt();
    if zr > 10.0 && d < 1.0 {
        return if d > 0.8 {
            (850.0, labels::BONE)
        } else {
            (220.0, labels::BONE)
        };
    }
    // Bladder with a 3 mm wall.
    let bc = s.bladder_center;
    let br = s.bladder_radii;
    let q = ((x - bc[0]) / br[0]).powi(2)
        + ((y - bc[1]) / br[1]).powi(2)
        + ((z - bc[2]) / br[2]).powi(2);
    if q < 1.0 {
        let wall = 1.0 - 3.0 / br[0].min(br[1]).min(br[2]);
        return if q.sqrt() > wall {
            (s.muscle_hu - 5.0, labels::BLADDER)
        } else {
            (s.bladder_hu, labels::BLADDER)
        };
    }
    // Rectum: behind the prostate, curving back as it rises.
    let ry = pc[1] + s.prostate_radii[1] + s.rectum_radius + 2.0 + 0.15 * zr.max(0.0);
    let rr = (((x - pc[0]) / 1.2).powi(2) + (y - ry).powi(2)).sqrt();
    if rr < s.rectum_radius && z < pc[2] + 70.0 {
        let lumen = s.rectum_radius - 4.0;
        if rr < lumen {
            let gas = s.rectum_gas && rr < lumen * 0.7 && y < ry;
            return (if gas { -1000.0 } else { 10.0 }, labels::RECTUM);
        }
        return (s.muscle_hu - 8.0, labels::RECTUM);
    }
    // Prostate and the tissue around it: a soft transition over about 2 mm.
    let pr = s.prostate_radius(p);
    let mean_r = (s.prostate_radii[0] + s.prostate_radii[1] + s.prostate_radii[2]) / 3.0;
    let w = 1.0 / (1.0 + ((pr - 1.0) * mean_r / 1.0).exp());
    if pr < 1.35 {
        let hu = s.periprostatic_hu + (s.prostate_hu - s.periprostatic_hu) * w;
        return (hu, if pr < 1.0 { labels::PROSTATE } else { 0 });
    }
    // Levator ani: a muscular sling beside and behind the prostate.
    if pr < 1.75 && y > pc[1] - 0.3 * s.prostate_radii[1] {
        return (s.muscle_hu - 5.0, 0);
    }
    // Obturator internus: muscle lining the pelvic side walls.
    for side in [-1.0, 1.0] {
        let d = ((x - side * a * 0.36) / 12.0).powi(2) + ((y - 0.05 * b) / (b * 0.35)).powi(2);
        if d < 1.0 && (zr).abs() < 45.0 {
            return (s.muscle_hu, 0);
        }
    }
    // Pelvic fat between the organs and the muscle wall, with a fat plane between the
    // gluteal muscles; muscle elsewhere.
    let inner = ((x / (a * 0.42)).powi(2) + ((y - 0.05 * b) / (b * 0.55)).powi(2)).sqrt();
    if inner < 1.0 {
        return (s.fat_hu + 10.0, labels::FAT);
    }
    let plane = ((x / (a * 0.7)).powi(2) + ((y - 0.25 * b) / (b * 0.75)).powi(2)).sqrt();
    if (plane - 1.0).abs() < 0.025 && y > -0.2 * b {
        return (s.fat_hu + 20.0, labels::FAT);
    }
    (s.muscle_hu, 0)
}

/// One phantom case in HU (int16 range) with its label map.
#[derive(Debug, Clone)]
pub struct PhantomCase {
    pub id: String,
    pub subject: Subject,
    pub image: Volume<f32>,
    pub labels: Volume<u8>,
}

/// Generate case `index` of the set made with `seed`.
pub fn generate(seed: u64, index: usize, size: &PhantomSize) -> PhantomCase {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    let s = Subject::random(&mut rng, size);
    let g = s.geometry();
    let [nx, ny, nz] = g.dims;
    let plane = nx * ny;
    let mut image = vec![0f32; g.len()];
    let mut label = vec![0u8; g.len()];
    let noise_seed: u64 = rng.random();
    // Soft-tissue texture, a sum of plane waves A sin(kx x + ky y + kz z + phase), split as
    // sin(u + v) = sin u cos v + cos u sin v with u along x and v along y and z: tables per
    // column and per row instead of a sine per voxel and wave.
    let cols: Vec<Vec<(f64, f64)>> = s
        .texture_waves
        .iter()
        .map(|w| {
            (0..nx)
                .map(|i| (w[1] * s.position(i, 0, 0)[0]).sin_cos())
                .collect()
        })
        .collect();
    image
        .par_chunks_mut(plane)
        .zip(label.par_chunks_mut(plane))
        .enumerate()
        .for_each(|(k, (img, lab))| {
            for j in 0..ny {
                let p0 = s.position(0, j, k);
                let rows: Vec<(f64, f64, f64)> = s
                    .texture_waves
                    .iter()
                    .map(|w| {
                        let (sv, cv) = (w[2] * p0[1] + w[3] * p0[2] + w[4]).sin_cos();
                        (w[0], sv, cv)
                    })
                    .collect();
                for i in 0..nx {
                    let p = s.position(i, j, k);
                    let (hu, l) = tissue(&s, p);
                    let hu = if (-200.0..300.0).contains(&hu) {
                        let t: f64 = rows
                            .iter()
                            .zip(&cols)
                            .map(|(&(a, sv, cv), c)| a * (c[i].0 * cv + c[i].1 * sv))
                            .sum();
                        hu + t
                    } else {
                        hu
                    };
                    img[i + nx * j] = hu as f32;
                    lab[i + nx * j] = l;
                }
            }
            // in-plane blur (partial volume, fuzzy boundaries), then noise
            for _ in 0..s.blur_passes {
                blur_plane(img, nx, ny);
            }
            let mut r = ChaCha8Rng::seed_from_u64(
                noise_seed ^ (k as u64).wrapping_mul(0xA24B_AED4_963E_E407),
            );
            let normal = Normal::new(0.0f32, s.noise_hu as f32)
                .unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("unit normal"));
            for v in img.iter_mut() {
                *v = round_hu((*v + normal.sample(&mut r)).clamp(-1024.0, 3071.0));
            }
        });
    // through-plane blur for thin slices (the scanner's slice profile)
    let mut image = Volume {
        data: image,
        geometry: g.clone(),
    };
    if s.spacing[2] < 2.0 && nz > 2 {
        let src = image.data.clone();
        image
            .data
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(k, out)| {
                let (a, c) = (k.saturating_sub(1), (k + 1).min(nz - 1));
                for (i, o) in out.iter_mut().enumerate() {
                    *o = round_hu(
                        0.25 * src[a * plane + i]
                            + 0.5 * src[k * plane + i]
                            + 0.25 * src[c * plane + i],
                    );
                }
            });
    }
    PhantomCase {
        id: format!("phantom_{index:03}"),
        subject: s,
        image,
        labels: Volume {
            data: label,
            geometry: g,
        },
    }
}

/// Round half away from zero to whole HU (as stored in int16), without a libm call.
#[inline]
fn round_hu(v: f32) -> f32 {
    (v + 0.5f32.copysign(v)) as i32 as f32
}

/// One pass of the [1 2 1] / 4 kernel along x and y.
fn blur_plane(img: &mut [f32], nx: usize, ny: usize) {
    let mut tmp = img.to_vec();
    for j in 0..ny {
        for i in 0..nx {
            let (a, c) = (i.saturating_sub(1), (i + 1).min(nx - 1));
            tmp[i + nx * j] =
                0.25 * img[a + nx * j] + 0.5 * img[i + nx * j] + 0.25 * img[c + nx * j];
        }
    }
    for j in 0..ny {
        let (a, c) = (j.saturating_sub(1), (j + 1).min(ny - 1));
        for i in 0..nx {
            img[i + nx * j] =
                0.25 * tmp[i + nx * a] + 0.5 * tmp[i + nx * j] + 0.25 * tmp[i + nx * c];
        }
    }
}

/// Write `cases` phantom cases made with `seed` as a Decathlon-layout dataset in `out`
/// (`imagesTr/phantom_000.nii.gz` int16 HU, `labelsTr/` uint8 labels, `dataset.json`).
/// Cases are generated and written in parallel; each file is written atomically.
/// `on_case` is called with each case id once it is on disk (for a progress bar).
pub fn write_dataset(
    out: &std::path::Path,
    cases: usize,
    seed: u64,
    size: &PhantomSize,
    on_case: &(dyn Fn(&str) + Sync),
) -> crate::Result<Vec<crate::Case>> {
    use crate::io::write_nifti;
    metricunet_core::fsio::remove_temporaries(out, true);
    let written: Vec<crate::Result<crate::Case>> = (0..cases)
        .into_par_iter()
        .map(|i| {
            let c = generate(seed, i, size);
            let image = out.join("imagesTr").join(format!("{}.nii.gz", c.id));
            let label = out.join("labelsTr").join(format!("{}.nii.gz", c.id));
            let hu = c.image.map(|v| v as i16);
            write_nifti(&image, &hu, None)?;
            write_nifti(&label, &c.labels, None)?;
            on_case(&c.id);
            Ok(crate::Case {
                id: c.id,
                image,
                label: Some(label),
            })
        })
        .collect();
    let written: Vec<crate::Case> = written.into_iter().collect::<crate::Result<_>>()?;
    let training: Vec<String> = written
        .iter()
        .map(|c| format!("    {{\"image\": \"./imagesTr/{0}.nii.gz\", \"label\": \"./labelsTr/{0}.nii.gz\"}}", c.id))
        .collect();
    let json = format!(
        "{{\n  \"name\": \"metricunet-phantom\",\n  \"description\": \"synthetic pelvic CT, seed {seed}\",\n  \"modality\": {{\"0\": \"CT\"}},\n  \"labels\": {{\"0\": \"background\", \"1\": \"prostate\", \"2\": \"bladder\", \"3\": \"rectum\", \"4\": \"bone\", \"5\": \"fat\"}},\n  \"numTraining\": {},\n  \"training\": [\n{}\n  ]\n}}\n",
        written.len(),
        training.join(",\n")
    );
    let path = out.join("dataset.json");
    metricunet_core::fsio::write_atomic(&path, json.as_bytes())?;
    Ok(written)
}

#[cfg(test)]
mod tests;
