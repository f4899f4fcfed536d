"""Records bitsandbytes' Adam8bit (its CPU backend) over 200 steps on fixed gradients, for
the conformance test `crates/sgdlab-py/tests/test_bnb.py`.

    pip install bitsandbytes   # 0.50.2 wrote the recorded file
    python bench/record_bnb_adam8bit.py crates/sgdlab-py/tests/data/bnb_adam8bit.npz

The gradients are `gradient(t)` below (an integer hash, the same bits in any language; the
test imports it from here). The file holds, after every step t = 1..200, the parameters and both moments' codes and block
scales (absmax), and the code books (`qmap1`, `qmap2`).
"""

import sys

import numpy as np

N, STEPS, LR = 512, 200, 1e-3


def gradient(t: int, n: int = N) -> np.ndarray:
    """Step t's gradient (t = 0, 1, ...): |g| in [0.5, 1.5)·2^-(i mod 4), sign by the hash."""
    i = np.arange(n, dtype=np.uint64)
    mask = np.uint64(0xFFFFFFFF)
    h = (i * np.uint64(2654435761) + np.uint64(t) * np.uint64(40503) + np.uint64(12345)) & mask
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & mask
    h ^= h >> np.uint64(12)
    u = (h >> np.uint64(8)).astype(np.float64) / 2**24
    sign = np.where((h & np.uint64(1)) == 1, -1.0, 1.0)
    scale = 2.0 ** -(np.arange(n) % 4).astype(np.float64)
    return (sign * (0.5 + u) * scale).astype(np.float32)


def start() -> np.ndarray:
    return np.linspace(-1, 1, N, dtype=np.float32)


def main(path: str) -> None:
    import bitsandbytes as bnb
    import torch

    p = torch.nn.Parameter(torch.from_numpy(start()))
    opt = bnb.optim.Adam8bit([p], lr=LR, min_8bit_size=256)
    out = {k: [] for k in ("params", "codes1", "codes2", "absmax1", "absmax2")}
    for t in range(STEPS):
        p.grad = torch.from_numpy(gradient(t))
        opt.step()
        s = opt.state[p]
        out["params"].append(p.detach().numpy().copy())
        out["codes1"].append(s["state1"].numpy().copy())
        out["codes2"].append(s["state2"].numpy().copy())
        out["absmax1"].append(s["absmax1"].numpy().copy())
        out["absmax2"].append(s["absmax2"].numpy().copy())
    s = opt.state[p]
    np.savez_compressed(
        path,
        qmap1=s["qmap1"].numpy(),
        qmap2=s["qmap2"].numpy(),
        version=np.array(bnb.__version__),
        **{k: np.stack(v) for k, v in out.items()},
    )


if __name__ == "__main__":
    main(sys.argv[1])
