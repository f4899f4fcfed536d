"""sgdlab: SGD built from running averages, on a Rust core.

* :class:`Optimizer` steps numpy arrays in place with any sgdlab optimizer spec — the exact,
  fused, multi-threaded kernels of the Rust library, with the GIL released during the step.
* :mod:`sgdlab.torch` (imported on demand; needs torch) has ``torch.optim``-compatible
  classes on the same kernels.
* :func:`set_num_threads` sets the threads of every optimizer step of the process (one
  per core by default): what each rank of a data-parallel job should set to its share.
* :func:`verify` and :func:`audit` run the lab: every claim of the problem set checked by
  measurement, and any optimizer's drift and fixed point at the loss minimiser.

Errors of the Rust core arrive as :class:`SgdlabError` (a ``ValueError``) with the library's
message; wrong argument types raise ``TypeError``. A step's arrays belong to the step until it
returns: other threads may read them, not write, resize or free them (the GIL is released).
What is guaranteed, and how it is tested: ``docs/src/reliability.md`` in the repository.

Example::

    import numpy as np, sgdlab
    w = np.zeros(3); g = np.array([1.0, -2.0, 0.5])
    opt = sgdlab.Optimizer("adamw:lr=1e-3,weight_decay=0.01")
    opt.step([w], [g])          # w is updated in place
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Sequence, Union

from ._core import (
    Optimizer,
    SgdlabError,
    __version__,
    get_num_threads,
    parse_spec,
    rule_keys,
    rules,
    set_num_threads,
)
from . import _core

__all__ = [
    "Optimizer",
    "SgdlabError",
    "audit",
    "get_num_threads",
    "parse_spec",
    "rule_keys",
    "rules",
    "set_num_threads",
    "verify",
    "__version__",
]


def verify(
    problems: Union[int, Iterable[int], None] = None,
    quick: bool = False,
    seed: Union[int, None] = None,
) -> list[dict[str, Any]]:
    """Checks the problem set's claims by measurement, as ``sgdlab verify`` does.

    Args:
        problems: a problem number or several (1–13; 8 and 9 repeat 5 and 7; 10 to 13 are
            sections beyond the problem set); all when None.
        quick: fewer samples (wider confidence intervals), as ``--quick``.
        seed: the seed of every random draw (the CLI's default when None).

    Returns:
        The claims, as the ``claims`` list of ``sgdlab verify --json``: one dict per claim
        (``id``, ``title``, ``expected``, ``measured``, ``stderr``, ``z``, ``passed``, ...).
        The run does not raise when a claim fails: read ``passed``.
    """
    if problems is None:
        selected: list[int] = []
    elif isinstance(problems, int):
        selected = [problems]
    else:
        selected = [int(p) for p in problems]
    for p in selected:
        if not 0 <= p <= 255:
            raise SgdlabError(f"invalid problem = {p}: there is no such problem (1-13)")
    report = json.loads(_core.verify_json(selected, bool(quick), seed))
    return report["claims"]


def audit(
    data: Union[str, "os.PathLike[str]", Any],
    model: str = "points",
    opts: Union[str, Callable[..., Any], Sequence[Union[str, Callable[..., Any]]]] = ("sgd",),
    *,
    bias: bool = True,
    loss_unit: str = "nats",
    steps: Union[int, None] = None,
    burn_in: Union[int, None] = None,
    seed: Union[int, None] = None,
) -> dict[str, Any]:
    """Measures each optimizer's drift at the loss minimiser and its fixed point, as
    ``sgdlab audit`` does.

    Args:
        data: a CSV file (optionally .gz), or a 2-D array of rows; the last column is the
            target except for ``points``.
        model: ``points``, ``linreg``, ``logreg`` or ``softmax``.
        opts: optimizers (one or several): sgdlab specs (``"adam:lr=0.01"``), or any
            ``torch.optim.Optimizer`` class or factory called as ``factory([param])``, e.g.
            ``torch.optim.Adam`` or ``functools.partial(MyOptimizer, lr=0.01)``. A torch
            optimizer steps one float64 parameter vector through torch tensors and is
            measured as sgdlab's own rules are: its state advances with the parameters held
            at the minimiser (a step at lr 0), and every example's step is probed from a copy
            of its state (``optimizer.state``, saved and restored); the fixed point is its own
            run at lr and lr/2. Its name in the report is the class's (with a partial's
            arguments).
        bias: fit the intercept (linreg, logreg); the CLI's ``--no-bias`` is ``bias=False``.
        loss_unit: ``nats`` or ``bits`` (cross-entropy models).
        steps, burn_in, seed: the simulations of stateful optimizers (CLI defaults when None).

    Returns:
        The audit as ``sgdlab audit --json`` writes it (``minimizer``, ``optimizers``).
    """
    if isinstance(opts, str) or callable(opts):
        opts = [opts]
    opts = list(opts)
    entries: list[Any] = []
    for opt in opts:
        if isinstance(opt, str):
            entries.append(opt)
        elif callable(opt):
            from ._foreign import maker

            entries.append(maker(opt))
        else:
            raise TypeError(
                "an audited optimizer is a spec string or a torch.optim.Optimizer class or "
                f"factory, not {type(opt).__name__}"
            )
    if not opts:
        raise SgdlabError("audit needs at least one optimizer spec")
    if steps is not None and steps < 80:
        raise SgdlabError(f"invalid steps = {steps}: need at least 80 for batch means")
    path = rows = None
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
    else:
        import numpy as np

        rows = np.asarray(data, dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"data must be a 2-D array of rows, not {rows.ndim}-D")
        rows = np.ascontiguousarray(rows)
    return json.loads(
        _core.audit_json(path, rows, model, entries, bool(bias), loss_unit, steps, burn_in, seed)
    )
