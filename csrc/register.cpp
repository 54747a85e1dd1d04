// The compiled kernels implement the ops that sparseforce/ops/library.py defines (one schema per
// op for every backend): csrc/cpu/ registers them for the CPU key and, when built, csrc/cuda/
// for the CUDA key, each with TORCH_LIBRARY_IMPL. A registration may precede the definition: the
// dispatcher holds it until library.py defines the op.
#include <Python.h>

// `import sparseforce._C` (the setup.py build) needs a module init; the kernels register from
// static initialisers when the library is loaded, so the module itself is empty. The JIT build is
// loaded with torch.ops.load_library and never calls this.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
