//! Compile the batch-norm folding shim (`src/models/ffi/fold.cpp`: libtorch's
//! `torch::jit::freeze`, which tch does not expose) against the libtorch torch-sys
//! links, set a run path to libtorch, and link `torch_cuda` unconditionally when
//! libtorch ships it, so a CUDA build of libtorch registers its CUDA backend even
//! though no Rust symbol references it (the linker would otherwise drop it under
//! `--as-needed`). A CPU-only libtorch has no `libtorch_cuda.so`; then nothing extra
//! is linked.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    for var in [
        "LIBTORCH_CXX11_ABI",
        "LIBTORCH_INCLUDE",
        "LIBTORCH_LIB",
        "PYTHON_SYS_EXECUTABLE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=src/models/ffi/fold.cpp");
    // torch-sys (`links = "tch"`) tells its dependents where it found libtorch.
    let lib = std::env::var_os("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .or_else(libtorch_lib_dir)
        .expect("libtorch not found: set LIBTORCH or LIBTORCH_USE_PYTORCH=1 (scripts/env does)");
    compile_fold_shim(&lib);
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

/// Builds `liboverinterp_fold.a` with the flags torch-sys builds its own C++ wrapper with.
fn compile_fold_shim(lib: &std::path::Path) {
    // torch-sys's own rule: LIBTORCH_INCLUDE when set, else next to the libraries.
    let include = match std::env::var_os("LIBTORCH_INCLUDE") {
        Some(root) => PathBuf::from(root).join("include"),
        None => lib
            .parent()
            .expect("libtorch lib dir has a parent")
            .join("include"),
    };
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi()))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/models/ffi/fold.cpp")
        .compile("overinterp_fold");
}

/// The C++ ABI libtorch was built with, in torch-sys's order: what the Python torch
/// package reports under `LIBTORCH_USE_PYTORCH`, else `LIBTORCH_CXX11_ABI`, else 1.
fn cxx11_abi() -> String {
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let out = python(&[
            "-c",
            "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))",
        ]);
        if let Some(v) = out {
            return v;
        }
    }
    std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())
}

/// Runs the Python torch-sys runs and returns its trimmed stdout.
fn python(args: &[&str]) -> Option<String> {
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Where libtorch's shared libraries are: `$LIBTORCH/lib`, or the `lib/` of the
/// Python `torch` package when `LIBTORCH_USE_PYTORCH` is set (as `scripts/env` does).
fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    std::env::var_os("LIBTORCH_USE_PYTORCH")?;
    let dir = python(&[
        "-c",
        "import torch, os; print(os.path.dirname(torch.__file__))",
    ])?;
    Some(PathBuf::from(dir).join("lib"))
}
