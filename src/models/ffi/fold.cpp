// Batch-norm folding for TorchScript models through libtorch's `torch::jit::freeze`,
// which tch does not expose. The frozen module is handed back serialized, so Rust
// loads it with tch's public `CModule::load_data_on_device` and never touches a raw
// module pointer. See src/models/fold.rs.
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>

namespace {

char* copy_out(const std::string& s, size_t* len) {
  char* buf = static_cast<char*>(std::malloc(s.size() + 1));
  if (buf == nullptr) {
    *len = 0;
    return nullptr;
  }
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  *len = s.size();
  return buf;
}

}  // namespace

extern "C" {

// Loads the TorchScript file `path` onto `device` (-1: CPU, n: CUDA n), casts its
// floating-point parameters and buffers to `scalar_type` (an at::ScalarType, or -1 to
// keep them), switches it to evaluation mode and freezes it: parameters become
// constants, and libtorch folds each batch norm that follows a convolution into it,
// removes dropout and folds constant arithmetic.
// Returns 0 and the frozen module serialized in `*out` (`*len` bytes), or 1 and the
// error message in `*out`. Free `*out` with `overinterp_fold_free`.
int overinterp_fold(const char* path, int device, int scalar_type, char** out, size_t* len) {
  try {
    const c10::Device dev = device < 0 ? c10::Device(c10::kCPU)
                                       : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
    torch::jit::Module module = torch::jit::load(std::string(path), dev);
    if (scalar_type >= 0) {
      module.to(dev, static_cast<c10::ScalarType>(scalar_type));
    }
    module.eval();
    torch::jit::Module frozen = torch::jit::freeze(module);
    std::ostringstream bytes;
    frozen.save(bytes);
    *out = copy_out(bytes.str(), len);
    return *out == nullptr ? 1 : 0;
  } catch (const std::exception& e) {
    *out = copy_out(e.what(), len);
    return 1;
  } catch (...) {
    *out = copy_out("unknown C++ exception", len);
    return 1;
  }
}

void overinterp_fold_free(char* p) { std::free(p); }

}  // extern "C"
