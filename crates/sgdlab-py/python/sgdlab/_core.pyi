"""Type stubs of sgdlab's Rust extension module (``sgdlab._core``)."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Self

__all__ = [
    "Optimizer",
    "SgdlabError",
    "rule_keys",
    "rules",
    "parse_spec",
    "verify_json",
    "audit_json",
    "_panic_for_tests",
    "__version__",
    "GLOBAL_KEYS",
    "GLOBAL_DEFAULTS",
    "rule_values",
    "set_num_threads",
    "get_num_threads",
]

__version__: str
#: The keys every optimizer takes whatever its rule (the library's one table).
GLOBAL_KEYS: tuple[str, ...]
#: Their defaults, as spec text: ``[(key, default), ...]``.
GLOBAL_DEFAULTS: list[tuple[str, str]]

_Array = npt.NDArray[Union[np.float32, np.float64]]
_Arrays = Union[Sequence[_Array], Mapping[str, _Array]]
_Value = Union[bool, int, float, str]
_Path = Union[str, "os.PathLike[str]"]

class SgdlabError(ValueError):
    """An error reported by sgdlab's Rust core, with the library's message."""

@final
class Optimizer:
    """An sgdlab optimizer over numpy arrays.

    Args:
        spec: any optimizer spec the CLI takes, e.g. ``"adamw:lr=1e-3,weight_decay=0.01"``.
        groups: parameter groups in the CLI's ``--group`` syntax (``"*.bias:weight_decay=0"``),
            matched against the names of the arrays stepped.
    """

    def __new__(cls, spec: str, groups: Sequence[str] = ...) -> Self: ...
    def __copy__(self) -> Optimizer:
        """An independent copy (state and all)."""
    def __deepcopy__(self, _memo: dict[int, Any]) -> Optimizer:
        """An independent copy (state and all)."""
    def step(
        self,
        params: _Arrays,
        grads: _Arrays,
        loss: Optional[float] = None,
        *,
        names: Optional[Sequence[str]] = None,
        lr_scale: float = 1.0,
        micro_batches: int = 1,
        totals: Optional[tuple[float, int, int]] = None,
    ) -> dict[str, Any]:
        """One step: updates every array of ``params`` in place from ``grads``.

        ``params`` and ``grads`` are lists of C-contiguous, writeable float32 or float64 arrays
        in the same order (named ``"0"``, ``"1"``, ... unless ``names`` is given) or dicts by
        name. Returns ``{"applied": bool, "lr": float, "grad_norm": float | None}``.

        Names must be distinct, and no parameter may share memory with another array of the
        step (checked by address range). The GIL is released during the step: other threads
        may read the arrays, but must not write, resize or free them until it returns.

        ``totals``, when the arrays are one process's part of a model (sharded data-parallel
        training), is ``(norm_sq, nonfinite, numel)`` summed over every process's
        :meth:`local_totals`: the step clips, normalises and skips by the whole model's sums.
        """
    def local_totals(self, grads: Sequence[np.ndarray]) -> tuple[float, int, int]:
        """This process's part of a distributed step's ``totals``: (Σg² in float64 when the
        optimizer clips or its rule needs the norm, else 0; 1 if a gradient holds a NaN or an
        infinity when it checks or needs the norm, else 0; the number of elements).
        ``grads``: float32, float64 or uint16 (bfloat16 bits) arrays."""
    def step_bf16(
        self,
        params: _Arrays,
        grads: _Arrays,
        loss: Optional[float] = None,
        *,
        names: Optional[Sequence[str]] = None,
        lr_scale: float = 1.0,
        micro_batches: int = 1,
        totals: Optional[tuple[float, int, int]] = None,
    ) -> dict[str, Any]:
        """One step on bfloat16 parameters: ``params`` are uint16 arrays of bfloat16 bits
        (updated in place), ``grads`` uint16 (bfloat16 bits) or float32 arrays. The step runs
        in float32 on the exact widening; the parameters are rounded back from a float32
        master copy to nearest (``master_weights=true``) or with the spec's ``rounding``.
        """
    def master(self, tensor: int) -> Optional[np.ndarray]:
        """The float32 master copy of tensor ``tensor``'s bfloat16 parameters (flat;
        ``master_weights=true``, after the first step), or None."""
    @property
    def steps(self) -> int:
        """Applied steps."""
    @property
    def skipped(self) -> int:
        """Steps skipped for a non-finite gradient (``skip_nonfinite=true``)."""
    @property
    def spec(self) -> str:
        """The spec as text."""
    @property
    def groups(self) -> list[str]:
        """The parameter groups as text."""
    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float64"``: the state's dtype, set by the first step."""
    @property
    def lr(self) -> float:
        """The learning rate of the next step (group 0); settable."""
    @lr.setter
    def lr(self, value: float) -> None: ...
    @property
    def schedule(self) -> str:
        """The learning-rate schedule in the library's grammar (lengths in steps); settable."""
    @schedule.setter
    def schedule(self, value: str) -> None: ...
    def set(self, key: str, value: _Value) -> None:
        """Sets a key of the spec, keeping the state."""
    def set_group(self, group: int, key: str, value: _Value) -> None:
        """Sets a key of parameter group ``group`` (0: the optimizer's own spec)."""
    def set_group_keys(self, group: int, keys: Mapping[str, _Value]) -> None:
        """Sets several keys of a group at once, validated together."""
    @property
    def layout(self) -> Optional[list[tuple[str, list[int]]]]:
        """Names and shapes fixed by the first step (None before)."""
    def group_of(self, tensor: int) -> Optional[int]:
        """The parameter group of tensor ``tensor``."""
    def slot_names(self, tensor: int) -> list[str]:
        """The state buffer names of tensor ``tensor``'s rule."""
    def state(self, slot: str, tensor: int) -> Optional[_Array]:
        """A copy of a state buffer, shaped like the tensor."""
    def tensor_scalars(self, tensor: int) -> Optional[list[float]]:
        """The per-tensor scalars of a tensor (NAdam's ``mu_product``, Madam's ``max``,
        Schedule-Free's ``lr_max``, ``weight_sum``, ``ckp1``; empty for the other rules), or
        None before the first step."""
    def eval_point(self, tensor: int) -> Optional[_Array]:
        """A copy of the evaluation point (Schedule-Free's x) of a tensor."""
    @property
    def in_eval_mode(self) -> bool:
        """Whether the parameters hold the evaluation point."""
    def eval_mode(self, params: _Arrays, *, names: Optional[Sequence[str]] = None) -> None:
        """Swaps the parameters in place to the evaluation point."""
    def train_mode(self, params: _Arrays, *, names: Optional[Sequence[str]] = None) -> None:
        """Swaps the parameters back after :meth:`eval_mode`."""
    def state_dict(self) -> dict[str, Any]:
        """``{"metadata": {str: str}, "buffers": {"slot/tensor": ndarray}}`` (copies)."""
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replaces the state by a :meth:`state_dict` (checked; on error nothing changes)."""
    def to_bytes(self) -> bytes:
        """The state as checkpoint bytes (safetensors)."""
    @staticmethod
    def from_bytes(bytes: bytes) -> Optimizer:
        """An optimizer from :meth:`to_bytes`'s bytes."""
    def save(self, path: _Path) -> None:
        """Writes the state to ``path`` atomically."""
    @staticmethod
    def load(path: _Path) -> Optimizer:
        """Loads an optimizer written by :meth:`save`."""

def rules() -> list[str]:
    """The names of every optimizer rule."""

def rule_keys(name: str) -> list[str]:
    """The keys a rule accepts, then the global ones."""

def set_num_threads(n: int) -> None:
    """Runs the optimizer steps of this process on ``n`` threads (0: one per core, or
    ``RAYON_NUM_THREADS``). The results do not depend on it."""

def get_num_threads() -> int:
    """The number of threads the next optimizer step uses."""

def rule_values(spec: str) -> list[tuple[str, str]]:
    """Every key of ``spec``'s rule with its value as spec text, defaults included (the spec
    parsed and validated)."""

def parse_spec(spec: str) -> tuple[str, list[tuple[str, str]]]:
    """A validated spec: its rule and the keys that differ from the defaults."""

def verify_json(problems: Sequence[int], quick: bool, seed: Optional[int]) -> str: ...
def audit_json(
    path: Optional[str],
    rows: Optional[npt.NDArray[np.float64]],
    model: str,
    opts: Sequence[Union[str, tuple[str, Callable[[int], Any]]]],
    bias: bool,
    loss_unit: str,
    steps: Optional[int],
    burn_in: Optional[int],
    seed: Optional[int],
) -> str: ...

def _panic_for_tests(message: str) -> None:
    """Panics in the Rust core with ``message`` (for the tests of the panic guard only)."""
