//! Set a run path to libtorch, and link `torch_cuda` unconditionally when libtorch ships it, so a CUDA build of
//! libtorch registers its CUDA backend even though no Rust symbol references it
//! (the linker would otherwise drop it under `--as-needed`). A CPU-only libtorch
//! has no `libtorch_cuda.so`; then nothing extra is linked.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let Some(lib) = libtorch_lib_dir() else {
        return;
    };
    // A run path to libtorch, so `target/release/overinterp` starts without
    // LD_LIBRARY_PATH. It is a RUNPATH: LD_LIBRARY_PATH still wins, which is how
    // the same binary runs against another torch 2.11.0 (e.g. a CUDA machine's).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Where libtorch's shared libraries are: `$LIBTORCH/lib`, or the `lib/` of the
/// Python `torch` package when `LIBTORCH_USE_PYTORCH` is set (as `scripts/env` does).
fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    std::env::var_os("LIBTORCH_USE_PYTORCH")?;
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import torch, os; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()).join("lib"))
}
