//! With the `cuda` feature, the crate's CUDA kernels (src/cuda/*.cu) are compiled to PTX by
//! nvcc (`$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH) for
//! `compute_$CUDA_COMPUTE_CAP` (default 80: PTX that newer GPUs compile on load) and embedded
//! with `include_str!`. Without the feature nothing is built and no nvcc is needed.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["bn_relu"];

fn main() {
    println!("cargo::rerun-if-env-changed=CARGO_FEATURE_CUDA");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in KERNELS {
        let src = format!("src/cuda/{name}.cu");
        println!("cargo::rerun-if-changed={src}");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{} --ptx {src} failed ({s})", nvcc.display()),
            Err(e) => panic!(
                "the `cuda` feature compiles {src} with nvcc, but `{}` could not be run: {e}; \
                 set NVCC or CUDA_HOME to a CUDA toolkit (README.md, Training: Device)",
                nvcc.display()
            ),
        }
    }
}
