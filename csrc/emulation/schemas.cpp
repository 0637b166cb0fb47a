// The test-only library of emulated CUDA kernels: the dsch_ext schemas again,
// as torch.ops.dsch_ext_emulated.*, implemented for CPU tensors by the CUDA
// sources compiled with the host compiler (see emulator.h and
// tests/emulation_build.py, which builds this library).
#include <torch/library.h>

#include "../op_schemas.h"

#define DSCH_EXT_DEFINE(schema) m.def(schema);

TORCH_LIBRARY(dsch_ext_emulated, m) { DSCH_EXT_OP_SCHEMAS(DSCH_EXT_DEFINE) }
