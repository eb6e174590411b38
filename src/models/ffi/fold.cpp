// Batch-norm folding for TorchScript models through libtorch's `torch::jit::freeze`,
// which tch does not expose. The frozen module is handed back serialized, so Rust
// loads it with tch's public `CModule::load_data_on_device` and never touches a raw
// module pointer. See src/models/fold.rs.
#include <cstdlib>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/serialization/import.h>

namespace {

// A malloc'd, NUL-terminated copy of `n` bytes at `p` (null if out of memory). Only
// malloc and memcpy, so it cannot throw inside a catch handler.
char* copy_out(const char* p, size_t n, size_t* len) noexcept {
  char* buf = static_cast<char*>(std::malloc(n + 1));
  if (buf == nullptr) {
    *len = 0;
    return nullptr;
  }
  std::memcpy(buf, p, n);
  buf[n] = '\0';
  *len = n;
  return buf;
}

// Batch-norm nodes left in `block` and its sub-blocks.
long count_batch_norms(const torch::jit::Block* block) {
  long n = 0;
  for (const torch::jit::Node* node : block->nodes()) {
    if (std::strstr(node->kind().toQualString(), "batch_norm") != nullptr) {
      ++n;
    }
    for (const torch::jit::Block* sub : node->blocks()) {
      n += count_batch_norms(sub);
    }
  }
  return n;
}

}  // namespace

extern "C" {

// Loads the TorchScript file `path` onto `device` (-1: CPU, n: CUDA n), casts its
// parameters and tensor attributes to `scalar_type` (an at::ScalarType, or -1 to keep
// them; as `Module::to` does, integer buffers too), switches it to evaluation mode and
// freezes it: parameters become constants, and libtorch folds each batch norm that
// directly follows a convolution into it, removes dropout and folds constant
// arithmetic. `*batch_norms_left` gets the batch-norm nodes freezing could not fold.
// Returns 0 and the frozen module serialized in `*out` (`*len` bytes), or 1 and the
// error message in `*out`. Free `*out` with `overinterp_fold_free`.
int overinterp_fold(const char* path, int device, int scalar_type, char** out, size_t* len,
                    long* batch_norms_left) noexcept {
  *out = nullptr;
  *len = 0;
  *batch_norms_left = -1;
  try {
    const c10::Device dev = device < 0 ? c10::Device(c10::kCPU)
                                       : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
    torch::jit::Module module = torch::jit::load(std::string(path), dev);
    if (scalar_type >= 0) {
      module.to(dev, static_cast<c10::ScalarType>(scalar_type));
    }
    module.eval();
    torch::jit::Module frozen = torch::jit::freeze(module);
    *batch_norms_left = count_batch_norms(frozen.get_method("forward").graph()->block());
    std::ostringstream bytes;
    frozen.save(bytes);
    const std::string s = bytes.str();
    *out = copy_out(s.data(), s.size(), len);
    return *out == nullptr ? 1 : 0;
  } catch (const std::exception& e) {
    const char* what = e.what();
    *out = copy_out(what, std::strlen(what), len);
    return 1;
  } catch (...) {
    static const char unknown[] = "unknown C++ exception";
    *out = copy_out(unknown, sizeof(unknown) - 1, len);
    return 1;
  }
}

void overinterp_fold_free(char* p) noexcept { std::free(p); }

}  // extern "C"
