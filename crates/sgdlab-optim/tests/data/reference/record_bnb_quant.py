"""Records bitsandbytes' blockwise dynamic 8-bit quantization for `tests/quant.rs`: the
signed and unsigned code books of `create_dynamic_map`, and `quantize_blockwise` (CPU,
block size 256) of a seeded vector with a ragged last block, an all-zero block and an
outlier, as float32 bit patterns and codes.

    python3 record_bnb_quant.py > bnb-quant.json
"""
import json

import bitsandbytes
import numpy as np
import torch
from bitsandbytes import functional as F


def bits(t):
    return t.contiguous().view(torch.int32).tolist()


gen = torch.Generator().manual_seed(7)
x = torch.randn(1000, generator=gen, dtype=torch.float32) * 0.01
x[256:512] = 0.0
x[600] = 3.0
v = x * x
out = {
    "source": f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}, CPU",
    "signed_map": bits(F.create_dynamic_map(signed=True)),
    "unsigned_map": bits(F.create_dynamic_map(signed=False)),
    "block_size": 256,
    "cases": [],
}
for name, values, signed in [("signed", x, True), ("unsigned", v, False)]:
    code = F.create_dynamic_map(signed=signed)
    q, state = F.quantize_blockwise(values, code=code, blocksize=256)
    out["cases"].append(
        {
            "name": name,
            "signed": signed,
            "input": bits(values),
            "codes": q.tolist(),
            "absmax": bits(state.absmax),
            "dequantized": bits(F.dequantize_blockwise(q, state)),
        }
    )
print(json.dumps(out))
