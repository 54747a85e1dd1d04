// The op schemas of sparseforce, shared by every device: CPU kernels live in csrc/cpu/, CUDA
// kernels (when built) in csrc/cuda/, each registered with TORCH_LIBRARY_IMPL for its key.
//
// Conventions the Python side (sparseforce/ops/cpp) relies on:
//  * argument checking happens in sparseforce/ops/_schema.py; the kernels only guard against
//    misuse that would read out of bounds;
//  * a NaN score is reported as a ValueError whose message begins "scores[i]" (or, for the
//    fused saliency, names "weights[i]"), i the index of the first tensor holding one;
//  * `prev_masks` is an empty list for "no previous masks" (an optional list would add nothing).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(sparseforce, m) {
  // The fake (meta) kernels used by torch.compile are registered from Python in this module.
  m.set_python_module("sparseforce.ops.cpp._fake");

  m.def("topk_masks(Tensor[] scores, int k) -> Tensor[]");
  m.def("topk_masks_out(Tensor[] scores, int k, Tensor(a!)[] out) -> ()");
  m.def("kth_largest(Tensor[] scores, int k) -> Tensor");
  m.def(
      "saliency_topk_masks(Tensor[] weights, Tensor[] grads, int k, Tensor[] prev_masks, "
      "bool resurrect) -> Tensor[]");
  m.def(
      "saliency_topk_masks_out(Tensor[] weights, Tensor[] grads, int k, Tensor[] prev_masks, "
      "bool resurrect, Tensor(a!)[] out) -> ()");
  // One radix pass for a selection whose scan runs elsewhere (sparseforce.distributed): the
  // histogram of the 16-bit digit at `shift` of the competing keys (ranked as rank_dtype) whose
  // higher bits equal `prefix`; grads empty: keys of `a` itself, else of |a*grads|. Returns
  // int64[2^16 + 1]: the counts, then the first tensor with a NaN (top pass) or -1.
  m.def(
      "radix_histogram(Tensor[] a, Tensor[] grads, Tensor[] prev_masks, ScalarType rank_dtype, int shift, "
      "int prefix) -> Tensor");
  // fresh_buffers[i] != 0: momentum_buffers[i] holds no state yet and becomes d_p (torch's
  // first step). momentum_buffers is empty when momentum == 0.
  m.def(
      "masked_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor?[] masks, float lr, float momentum, float dampening, float weight_decay, "
      "bool nesterov, int[] fresh_buffers) -> ()");
}

// `import sparseforce._C` (the setup.py build) needs a module init; the ops register from the
// static initialisers above when the library is loaded, so the module itself is empty. The JIT
// build is loaded with torch.ops.load_library and never calls this.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
