// The Python extension module dsch_ext._C. It holds no functions: importing
// it loads the shared library, whose static initialisers register the ops
// with torch (torch.ops.dsch_ext.*). The CMake build leaves this file out
// and is loaded with torch.ops.load_library instead.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
