"""Records cautious-masking reference trajectories with weight decay
(`conformance/po-lion-cautious-wd.json`, `conformance/po-adopt-cautious-l2.json`,
`conformance/po-adopt-cautious-decoupled.json`) for `tests/optim/conformance.rs`: the inputs
(start, gradients, losses) of the shared `po-lion-cautious.json` and `po-adopt.json`, stepped by
pytorch-optimizer's `Lion` and `ADOPT` with `cautious=True` in float64, with decoupled weight
decay (Lion, ADOPT) and with weight decay added to the gradient (ADOPT, whose mask then
compares the update with the decayed gradient).

    pip install pytorch-optimizer==4.1.0 torch
    python3 record_cautious.py
"""
import json
import pathlib

import torch
from pytorch_optimizer import ADOPT, Lion

torch.set_default_dtype(torch.float64)
conformance = pathlib.Path(__file__).parent / "../conformance"

CASES = [
    (
        "po-lion-cautious",
        "po-lion-cautious-wd",
        "lion:lr=0.001,beta1=0.9,beta2=0.99,weight_decay=0.5,cautious=true",
        lambda p: Lion([p], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.5, cautious=True),
    ),
    (
        "po-adopt",
        "po-adopt-cautious-l2",
        "adopt:lr=0.01,beta1=0.9,beta2=0.9999,eps=1e-6,weight_decay=0.3,cautious=true",
        lambda p: ADOPT([p], lr=0.01, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.3,
                        weight_decouple=False, cautious=True),
    ),
    (
        "po-adopt",
        "po-adopt-cautious-decoupled",
        "adopt:lr=0.01,beta1=0.9,beta2=0.9999,eps=1e-6,weight_decay=0.3,"
        "decoupled_weight_decay=true,cautious=true",
        lambda p: ADOPT([p], lr=0.01, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.3,
                        weight_decouple=True, cautious=True),
    ),
]

for base, name, spec, make in CASES:
    case = json.loads((conformance / f"{base}.json").read_text())
    p = torch.tensor(case["init"])
    opt = make(p)
    expected = []
    for g in case["grads"]:
        p.grad = torch.tensor(g)
        opt.step()
        expected.append(p.tolist())
    case.update(
        name=name,
        source=f"pytorch-optimizer 4.1.0, torch {torch.__version__}, "
        f"float64; inputs of {base}.json",
        optimizer=spec,
        expected=expected,
    )
    case.pop("expected_eval", None)
    (conformance / f"{name}.json").write_text(json.dumps(case) + "\n")
    print(f"wrote {name}.json")
