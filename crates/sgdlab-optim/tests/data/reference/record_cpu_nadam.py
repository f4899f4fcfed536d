"""Re-records the shared NAdam reference (`conformance/torch-nadam.json`, recorded with
torch 2.15.0+cu132) with CPU torch, for `tests/conformance.rs`: CPU torch 2.15.0 itself differs
from the shared file by 1.4e-10 (relative to each coordinate's scale), while sgdlab equals CPU
torch bit for bit.

    python3 record_cpu_nadam.py > torch-cpu-nadam.json
"""
import json
import pathlib

import torch

torch.set_default_dtype(torch.float64)
here = pathlib.Path(__file__).parent
case = json.loads((here / "../conformance/torch-nadam.json").read_text())
p = torch.tensor(case["init"])
opt = torch.optim.NAdam([p], lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, foreach=False)
expected = []
for g in case["grads"]:
    p.grad = torch.tensor(g)
    opt.step()
    expected.append(p.tolist())
case.update(
    name="torch-cpu-nadam",
    source=f"torch {torch.__version__} on CPU (foreach=False), float64; inputs of torch-nadam.json",
    expected=expected,
)
print(json.dumps(case))
