"""How ``torch.compile`` sees one step of sgdlab's torch engine: graphs, graph breaks and
recompilations over ten steps of AdamW on a device.

    python crates/sgdlab-py/benches/compile_report.py --device cuda
"""

from __future__ import annotations

import argparse
import json

import torch
import torch._dynamo.utils

import sgdlab.torch as st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--backend", default="inductor", help="torch.compile's backend")
    args = ap.parse_args()
    ps = [torch.nn.Parameter(torch.randn(1000, device=args.device)) for _ in range(args.tensors)]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = st.AdamW(ps, lr=1e-3, implementation="torch", check_finite=False)
    torch._dynamo.utils.counters.clear()
    step = torch.compile(opt.step, backend=args.backend)
    for _ in range(10):
        step()
    counters = torch._dynamo.utils.counters
    print(json.dumps({
        "graph_breaks": dict(counters["graph_break"]),
        "stats": dict(counters["stats"]),
        "frames": dict(counters["frames"]),
    }, indent=1, default=str))


if __name__ == "__main__":
    main()
