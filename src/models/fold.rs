//! Batch-norm folding for TorchScript models: libtorch's `torch::jit::freeze` turns
//! parameters into constants and folds each batch norm that directly follows a
//! convolution (and whose convolution output has no other use) into that convolution's
//! weights and bias, so evaluation and the gradient method's forward + backward skip
//! the batch-norm passes (a TorchScript ResNet20's forward + backward to the input of
//! 32 images ran 16.84 against 13.83 steps/s on 2 AVX2 cores,
//! `scripts/bench-vs-reference`). tch does not expose freezing, so a small C++ shim
//! (`ffi/fold.cpp`, built by `build.rs`) freezes the file and returns the frozen module
//! serialized; it is loaded back through tch's public API. Folding changes only the
//! rounding of the folded weights.
use std::ffi::{c_char, c_int, CString};
use std::path::Path;

use tch::{CModule, Device, Kind};

extern "C" {
    fn overinterp_fold(
        path: *const c_char,
        device: c_int,
        scalar_type: c_int,
        out: *mut *mut c_char,
        len: *mut usize,
        batch_norms_left: *mut std::ffi::c_long,
    ) -> c_int;
    fn overinterp_fold_free(p: *mut c_char);
}

/// The shim's device number: -1 for the CPU, the index for a CUDA device.
fn device_code(device: Device) -> Result<c_int, String> {
    match device {
        Device::Cpu => Ok(-1),
        Device::Cuda(i) => Ok(i as c_int),
        other => Err(format!("folding runs on the CPU or CUDA, not {other:?}")),
    }
}

/// libtorch's `ScalarType` numbers of the kinds a model runs at.
fn scalar_type(kind: Kind) -> Result<c_int, String> {
    match kind {
        Kind::Half => Ok(5),
        Kind::Float => Ok(6),
        Kind::Double => Ok(7),
        Kind::BFloat16 => Ok(15),
        other => Err(format!("folding casts to float kinds, not {other:?}")),
    }
}

/// A frozen module and what freezing could not fold.
pub(super) struct Folded {
    pub module: CModule,
    /// Batch-norm nodes left in the frozen `forward` graph: those that do not directly
    /// follow a convolution (e.g. pre-activation blocks' batch norm before its ReLU).
    pub batch_norms_left: usize,
}

/// Loads the TorchScript file at `path` onto `device`, cast to `kind` (`None`: as
/// saved), in evaluation mode, frozen with its batch norms folded. Errors carry
/// libtorch's reason (e.g. a module with interface-typed submodules cannot be
/// frozen); the caller then uses the module unfolded.
pub(super) fn load_folded(
    path: &Path,
    device: Device,
    kind: Option<Kind>,
) -> Result<Folded, String> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "the path contains a NUL byte".to_string())?;
    let dev = device_code(device)?;
    let st = kind.map_or(Ok(-1), scalar_type)?;
    let mut out: *mut c_char = std::ptr::null_mut();
    let mut len = 0usize;
    let mut left: std::ffi::c_long = -1;
    // SAFETY: the shim reads the NUL-terminated path and writes a malloc'd buffer of
    // `len` bytes (or null) to `out`; the slice is used only before the buffer is freed.
    unsafe {
        let status = overinterp_fold(c_path.as_ptr(), dev, st, &mut out, &mut len, &mut left);
        if out.is_null() {
            return Err("the folding shim could not allocate its result".into());
        }
        let mut bytes = std::slice::from_raw_parts(out as *const u8, len);
        let result = if status != 0 {
            Err(super::torchscript::first_lines(&String::from_utf8_lossy(
                bytes,
            )))
        } else {
            CModule::load_data_on_device(&mut bytes, device)
                .map(|module| Folded {
                    module,
                    batch_norms_left: left.max(0) as usize,
                })
                .map_err(|e| format!("the frozen module does not load back: {e}"))
        };
        overinterp_fold_free(out);
        result
    }
}
