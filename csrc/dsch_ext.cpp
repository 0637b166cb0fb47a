// Defines the dsch_ext operators (torch.ops.dsch_ext.*) from the schema list
// in op_schemas.h.
//
// Kernels live in cpu/<op>.cpp and cuda/<op>.cu (one TORCH_LIBRARY_IMPL per
// dispatch key); fake (meta) kernels and autograd are registered from Python
// in dsch_ext/ops.py.
#include <torch/library.h>

#include "op_schemas.h"

#define DSCH_EXT_DEFINE(schema) m.def(schema);

TORCH_LIBRARY(dsch_ext, m) { DSCH_EXT_OP_SCHEMAS(DSCH_EXT_DEFINE) }
