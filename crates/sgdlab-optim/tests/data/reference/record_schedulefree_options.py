"""Records Schedule-Free reference trajectories with every option away from its default
(`conformance/sf-sgd-options.json`, `conformance/sf-adamw-options.json`) for
`tests/conformance.rs`: the inputs (start, gradients, losses) of the shared `sf-sgd.json` and
`sf-adamw.json`, stepped by the `schedulefree` package's reference classes in float64 with
weight decay, warm-up, polynomial averaging weights (r) and another weight_lr_power; the
expected parameters are y (the training point) after each step and the expected evaluation
point is x.

    pip install schedulefree==1.4.1 torch
    python3 record_schedulefree_options.py
"""
import json
import pathlib

import schedulefree
import torch

torch.set_default_dtype(torch.float64)
conformance = pathlib.Path(__file__).parent / "../conformance"

CASES = [
    (
        "sf-sgd",
        "sf-sgd:lr=0.1,momentum=0.8,weight_decay=0.05,warmup_steps=3,r=1,weight_lr_power=1",
        lambda p: schedulefree.SGDScheduleFreeReference(
            [p], lr=0.1, momentum=0.8, weight_decay=0.05, warmup_steps=3, r=1.0,
            weight_lr_power=1.0,
        ),
    ),
    (
        "sf-adamw",
        "sf-adamw:lr=0.01,beta1=0.8,beta2=0.99,eps=1e-6,weight_decay=0.02,warmup_steps=3,"
        "r=0.5,weight_lr_power=3",
        lambda p: schedulefree.AdamWScheduleFreeReference(
            [p], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02, warmup_steps=3,
            r=0.5, weight_lr_power=3.0,
        ),
    ),
]

for base, spec, make in CASES:
    case = json.loads((conformance / f"{base}.json").read_text())
    p = torch.tensor(case["init"])
    opt = make(p)
    opt.train()
    expected, expected_eval = [], []
    for g in case["grads"]:
        p.grad = torch.tensor(g)
        opt.step()
        expected.append(p.tolist())
        expected_eval.append(opt.state[p]["x"].tolist())
    case.update(
        name=f"{base}-options",
        source=f"schedulefree {schedulefree.__version__ if hasattr(schedulefree, '__version__') else '1.4.1'} "
        f"reference, torch {torch.__version__}, float64; inputs of {base}.json",
        optimizer=spec,
        expected=expected,
        expected_eval=expected_eval,
    )
    (conformance / f"{base}-options.json").write_text(json.dumps(case) + "\n")
    print(f"wrote {base}-options.json")
