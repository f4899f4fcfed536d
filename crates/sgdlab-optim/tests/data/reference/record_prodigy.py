"""Records Prodigy reference trajectories (prodigyopt 1.1.2, the authors' package) in float64:

- `conformance/prodigy-options-decoupled.json` and `conformance/prodigy-options-l2.json`:
  the inputs of the shared `prodigy.json` stepped with every option away from its default;
- `prodigy-groups.json` (for `tests/optim/prodigy.rs`): four tensors in three parameter
  groups (no decay on biases, another eps, a frozen group at lr 0 whose parameters the
  package still decays by the shared step), a first step with zero gradients (the package
  then only updates the averages) and a LinearLR warm-up; `scalars` are the package's d,
  d_max, d_numerator and k after the last step.

    pip install prodigyopt==1.1.2 torch
    python3 record_prodigy.py
"""
import json
import math
import pathlib

import torch
from prodigyopt import Prodigy
from torch.optim.lr_scheduler import LinearLR

torch.set_default_dtype(torch.float64)
here = pathlib.Path(__file__).parent
conformance = here / "../conformance"

CASES = [
    (
        "prodigy-options-decoupled",
        "prodigy:lr=0.5,beta1=0.8,beta2=0.99,eps=1e-6,weight_decay=0.1,use_bias_correction=true,"
        "safeguard_warmup=true,d0=1e-3",
        dict(lr=0.5, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, use_bias_correction=True,
             safeguard_warmup=True, d0=1e-3),
    ),
    (
        "prodigy-options-l2",
        "prodigy:lr=2,beta1=0,beta3=0.9,weight_decay=0.05,decouple=false,d0=1e-4,d_coef=2,"
        "growth_rate=1.05",
        dict(lr=2.0, betas=(0.0, 0.999), beta3=0.9, weight_decay=0.05, decouple=False, d0=1e-4,
             d_coef=2.0, growth_rate=1.05),
    ),
]

base = json.loads((conformance / "prodigy.json").read_text())
for name, spec, kwargs in CASES:
    p = torch.tensor(base["init"])
    opt = Prodigy([p], **kwargs)
    expected = []
    for g in base["grads"]:
        p.grad = torch.tensor(g)
        opt.step()
        expected.append(p.tolist())
    case = dict(base, name=name, source="prodigyopt 1.1.2 float64; inputs of prodigy.json",
                optimizer=spec, expected=expected)
    (conformance / f"{name}.json").write_text(json.dumps(case) + "\n")
    print(f"wrote {name}.json")

gen = torch.Generator().manual_seed(20261204)
shapes = {"fc1.weight": [4, 3], "fc1.bias": [4], "fc2.weight": [2, 4], "frozen.weight": [3]}
params = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
init = {n: p.clone() for n, p in params.items()}
steps, warmup = 40, 5
opt = Prodigy(
    [
        {"params": [params["fc1.weight"], params["fc2.weight"]]},
        {"params": [params["fc1.bias"]], "weight_decay": 0.0, "eps": 1e-4},
        {"params": [params["frozen.weight"]], "lr": 0.0},
    ],
    lr=1.0, weight_decay=0.01, d0=1e-5,
)
sched = LinearLR(opt, start_factor=0.2, end_factor=1.0, total_iters=warmup)
grads, expected, lrs = [], [], []
for t in range(steps):
    g = {n: torch.randn(s, generator=gen) * (1 + 0.5 * math.sin(t)) + 0.3 * params[n]
         for n, s in shapes.items()}
    if t == 0:
        g = {n: torch.zeros(s) for n, s in shapes.items()}
    for n, p in params.items():
        p.grad = g[n].clone()
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    grads.append({n: g[n].flatten().tolist() for n in shapes})
    expected.append({n: params[n].flatten().tolist() for n in shapes})
print("d after the last step:", opt.param_groups[0]["d"])
(here / "prodigy-groups.json").write_text(json.dumps({
    "source": "prodigyopt 1.1.2, torch " + torch.__version__ + ": groups [weights], "
              "[biases: weight_decay=0, eps=1e-4], [frozen: lr=0]; LinearLR(0.2, 1, 5); "
              "zero gradients at the first step; float64",
    "optimizer": "prodigy:lr=1,weight_decay=0.01,d0=1e-5",
    "groups": ["*.bias:weight_decay=0,eps=1e-4", "frozen.*:lr=0"],
    "schedule": f"linear:0.2,1,{warmup}",
    "tensors": [{"name": n, "shape": s, "init": init[n].flatten().tolist()}
                for n, s in shapes.items()],
    "grads": grads,
    "lrs": lrs,
    "expected": expected,
    "scalars": [opt.param_groups[0][k] for k in ("d", "d_max", "d_numerator", "k")],
}) + "\n")
print("wrote prodigy-groups.json")
