"""Foreign optimizers in the audit: a ``torch.optim.Optimizer`` driven one step at a time.

:func:`sgdlab.audit` wraps each optimizer class or factory it is given in a
:class:`TorchStepper` factory; the Rust audit calls ``make(dim)`` for a fresh optimizer and
then ``step``, ``save`` and ``restore`` on it (``sgdlab.lab.audit.Stepper``).
"""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any, Callable


def describe(factory: Callable[..., Any]) -> str:
    """A readable name for an optimizer class or factory: ``torch.optim.Adam``, or
    ``torch.optim.Adam(lr=0.01)`` for a ``functools.partial``."""
    if isinstance(factory, functools.partial):
        args = [repr(a) for a in factory.args]
        args += [f"{k}={v!r}" for k, v in factory.keywords.items()]
        return f"{describe(factory.func)}({', '.join(args)})"
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None)
    if name is None:
        return repr(factory)
    if not module or module in ("builtins", "__main__"):
        return name
    # The shortest module path that exports it: torch.optim.Adam, not torch.optim.adam.Adam.
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if getattr(sys.modules.get(prefix), name, None) is factory:
            return f"{prefix}.{name}"
    return f"{module}.{name}"


class TorchStepper:
    """One parameter vector (float64) and the optimizer ``factory([param])`` built on it."""

    def __init__(self, factory: Callable[..., Any], dim: int) -> None:
        import torch

        self._torch = torch
        self.param = torch.zeros(int(dim), dtype=torch.float64, requires_grad=True)
        optimizer = factory([self.param])
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"{describe(factory)}([param]) returned {type(optimizer).__name__}, not a "
                "torch.optim.Optimizer"
            )
        self.optimizer = optimizer
        self._base = []
        for group in optimizer.param_groups:
            lr = group.get("lr")
            if lr is None:
                raise ValueError(
                    f"{describe(factory)} has no learning rate ('lr' in its param groups): the "
                    "audit measures the step per unit learning rate"
                )
            self._base.append(float(lr))
        self.lr = self._base[0]
        self._saved: Any = None

    def step(self, params: Any, grad: Any, loss: float, lr_scale: float) -> Any:
        torch = self._torch
        with torch.no_grad():
            self.param.copy_(torch.from_numpy(params))
        self.param.grad = torch.from_numpy(grad).clone()
        for group, lr in zip(self.optimizer.param_groups, self._base):
            group["lr"] = lr * lr_scale
        self.optimizer.step()
        return self.param.detach().numpy().copy()

    def save(self) -> None:
        # The parameter's state and each group's own entries (an optimizer may keep state
        # there, as prodigyopt keeps d).
        self._saved = (
            _clone(self.optimizer.state.get(self.param, {})),
            [_clone({k: v for k, v in g.items() if k != "params"}) for g in self.optimizer.param_groups],
        )

    def restore(self) -> None:
        state, groups = self._saved
        self.optimizer.state[self.param] = _clone(state)
        for group, saved in zip(self.optimizer.param_groups, groups):
            group.update(_clone(saved))


def _clone(state: Any) -> Any:
    """A copy of one parameter's optimizer state: tensors cloned, the rest deep-copied."""
    torch = __import__("torch")
    return {
        k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
        for k, v in (state or {}).items()
    }


def maker(factory: Callable[..., Any]) -> tuple[str, Callable[[int], TorchStepper]]:
    """``(name, make)`` for the Rust audit."""
    return describe(factory), lambda dim: TorchStepper(factory, dim)
