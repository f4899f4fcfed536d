"""Records the float64 reference for `tests/groups_schedule.rs`: torch.optim.AdamW with two
parameter groups (weight decay on weights, none on biases) under SequentialLR(LinearLR warm-up,
CosineAnnealingLR), 50 steps on fixed pseudo-random gradients.

    python3 record_groups.py > torch-adamw-groups-sequentiallr.json

Needs torch (tested with 2.15.0).
"""
import json
import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

torch.set_default_dtype(torch.float64)
gen = torch.Generator().manual_seed(20261128)
shapes = {"fc1.weight": [4, 3], "fc1.bias": [4], "fc2.weight": [2, 4], "fc2.bias": [2]}
params = {n: torch.randn(s, generator=gen).requires_grad_(False) for n, s in shapes.items()}
init = {n: p.clone() for n, p in params.items()}
steps, warmup, lr, wd = 50, 10, 0.01, 0.05
opt = torch.optim.AdamW(
    [
        {"params": [params["fc1.weight"], params["fc2.weight"]]},
        {"params": [params["fc1.bias"], params["fc2.bias"]], "weight_decay": 0.0},
    ],
    lr=lr,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=wd,
)
sched = SequentialLR(
    opt,
    [LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=warmup),
     CosineAnnealingLR(opt, T_max=steps - warmup)],
    milestones=[warmup],
)
grads, expected, lrs = [], [], []
for t in range(steps):
    g = {n: torch.randn(s, generator=gen) * (1 + 0.5 * math.sin(t)) for n, s in shapes.items()}
    for n, p in params.items():
        p.grad = g[n].clone()
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    grads.append({n: g[n].flatten().tolist() for n in shapes})
    expected.append({n: params[n].flatten().tolist() for n in shapes})

print(json.dumps({
    "source": f"torch {torch.__version__}: AdamW, groups [weights: weight_decay={wd}], "
              f"[biases: weight_decay=0]; SequentialLR(LinearLR(0.1, 1, {warmup}), "
              f"CosineAnnealingLR({steps - warmup})), milestone {warmup}; float64",
    "optimizer": f"adamw:lr={lr},weight_decay={wd}",
    "groups": ["*.bias:weight_decay=0"],
    "schedule": f"seq[linear:0.1,1,{warmup};cosine:{steps - warmup}]@{warmup}",
    "tensors": [{"name": n, "shape": s, "init": init[n].flatten().tolist()} for n, s in shapes.items()],
    "grads": grads,
    "lrs": lrs,
    "expected": expected,
}))
