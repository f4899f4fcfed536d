"""Records SOAP reference trajectories (pytorch-optimizer 4.1.0, `pytorch_optimizer.SOAP`) in
float64, with the QR decomposition of its power iteration in float64 too (the package rounds
its input to float32 first: `get_orthogonal_matrix_qr` is replaced below by the package's own
code without that cast), for `conformance/`:

- `po-soap-square.json`: a 5×5 matrix, both sides rotated;
- `po-soap-options.json`: a 6×4 matrix with `max_precondition_dim=5` (the 6-side keeps the
  identity, the 4-side is rotated), other betas, ε and `shampoo_beta`;
- `po-soap-vector.json`: a vector (never rotated: Adam in SOAP's form).

Each statistic has full rank after the first step, so its eigenvectors are determined up to
sign, which cancels in the update. (On a non-square matrix whose larger side is rotated, the
first step's statistic for that side is rank-deficient, and the eigenvectors of its null
space are whatever the eigensolver returns; the trajectory depends on them.)

    pip install pytorch-optimizer==4.1.0 torch
    python3 record_soap.py
"""
import json
import math
import pathlib

import torch
from pytorch_optimizer import SOAP

torch.set_default_dtype(torch.float64)
conformance = pathlib.Path(__file__).parent / "../conformance"


def get_orthogonal_matrix_qr(self, state, max_precondition_dim=10000, merge_dims=False):
    """The package's method (merge_dims=False, channels_first) with the QR in float64."""
    assert not merge_dims
    exp_avg_sq = state["exp_avg_sq"]
    matrices = []
    for ind, (m, o) in enumerate(zip(state["GG"], state["Q"])):
        if len(m) == 0:
            matrices.append([])
            continue
        matrix_product = m @ o
        est_eig = (o * matrix_product).sum(dim=0)
        sort_idx = torch.argsort(est_eig, descending=True)
        exp_avg_sq = exp_avg_sq.index_select(ind, sort_idx)
        power_iter = matrix_product.index_select(1, sort_idx)
        q, _ = torch.linalg.qr(power_iter)
        matrices.append(q)
    state["exp_avg_sq"] = exp_avg_sq
    return matrices


SOAP.get_orthogonal_matrix_qr = get_orthogonal_matrix_qr

CASES = [
    ("po-soap-square", [5, 5], "soap:lr=0.003,weight_decay=0.01,precondition_frequency=3",
     dict(lr=0.003, weight_decay=0.01, precondition_frequency=3)),
    ("po-soap-options", [6, 4],
     "soap:lr=0.01,beta1=0.9,beta2=0.99,eps=1e-6,weight_decay=0.05,precondition_frequency=4,"
     "shampoo_beta=0.9,max_precondition_dim=5",
     dict(lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05, precondition_frequency=4,
          shampoo_beta=0.9, max_precondition_dim=5)),
    ("po-soap-vector", [7], "soap:lr=0.01,weight_decay=0.1",
     dict(lr=0.01, weight_decay=0.1)),
]

for k, (name, shape, spec, kwargs) in enumerate(CASES):
    gen = torch.Generator().manual_seed(20261204 + k)
    n = math.prod(shape)
    p = torch.randn(shape, generator=gen)
    init = p.flatten().tolist()
    opt = SOAP([p], **kwargs)
    grads, losses, expected = [], [], []
    for t in range(40):
        g = torch.randn(shape, generator=gen) * (1 + 0.5 * math.sin(t)) + 0.3 * p
        p.grad = g.clone()
        opt.step()
        grads.append(g.flatten().tolist())
        losses.append(0.0)
        expected.append(p.flatten().tolist())
    case = dict(name=name, source="pytorch-optimizer 4.1.0 float64 (QR of the power iteration in float64)",
                optimizer=spec, shape=shape, init=init, grads=grads, losses=losses, expected=expected)
    (conformance / f"{name}.json").write_text(json.dumps(case) + "\n")
    print(f"wrote {name}.json")
