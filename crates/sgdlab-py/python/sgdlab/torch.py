"""``torch.optim``-compatible optimizers on sgdlab's Rust kernels.

:class:`Adam`, :class:`AdamW`, :class:`SGD`, :class:`RMSprop` and :class:`Adagrad` take
``torch.optim``'s signatures and follow its semantics exactly (the conformance tests compare
trajectories with ``torch.optim`` to 1e-10 in float64); :class:`Optimizer` runs any sgdlab rule
(``spec="lion:lr=1e-4"``, ``"sf-adamw"``, ``"muon"``, the problem set's rules, ...).

They are ``torch.optim.Optimizer`` subclasses: parameter groups with per-group
hyper-parameters, ``zero_grad``, ``step(closure=None)``, ``state_dict``/``load_state_dict``,
hooks, and ``torch.optim.lr_scheduler`` schedulers (each group's current ``lr`` — and every
other hyper-parameter — is read at every step).

What differs from ``torch.optim``:

* CPU tensors step on the Rust kernels in place through shared memory (no copy); tensors on
  other devices step on the same rules in torch operations (``implementation=``). One
  optimizer steps one parameter dtype, float32, float64 or bfloat16. bfloat16 parameters
  (with bfloat16 or float32 gradients) step in float32 and are rounded back: stochastically
  by default, or from a float32 master copy with ``master_weights=True`` (the
  mixed-precision setting of large-model training).
* The Rust engine steps the set of parameters with a gradient at its first step; with
  ``implementation="auto"`` a change of that set moves the state, exactly, to the torch
  engine, which counts steps per parameter as ``torch.optim`` does.
* DTensor parameters (FSDP2, tensor parallelism) step their local shards; clipping's norm
  and the finiteness check are summed over the processes (``shard_group=`` for
  ``ZeroRedundancyOptimizer``'s partitions).
* ``state_dtype="bf16"`` (``Adam``, ``AdamW``; any rule through ``spec=``) keeps the moments
  in bfloat16 with stochastic rounding (``rounding="nearest"`` to round to nearest);
  ``state_dtype="q8"`` keeps them in 8 bits, blockwise (bitsandbytes' dynamic code books,
  ``block_size`` through ``spec=``), on the Rust engine (CPU tensors) only;
  ``master_weights=True`` (``Adam``, ``AdamW``; ``spec="...,master_weights=true"``) keeps a
  float32 copy of bfloat16 parameters.
* A non-finite gradient raises :class:`sgdlab.SgdlabError` and changes nothing, unless
  ``skip_nonfinite=True`` (skip and count the step) or ``check_finite=False`` (do not look,
  as ``torch.optim``; the fastest step).
* The Rust engine's state lives in the Rust optimizer: ``optimizer.state[p]`` reads it as
  ``torch.optim`` lays it out, and ``state_dict()`` holds it exactly (as checkpoint bytes
  under ``"sgdlab"``, and per parameter under ``"state"`` in ``torch.optim``'s layout).
* As with ``torch.optim``, a step (and ``eval()``/``train()``) changes the parameters in
  place and bumps their autograd version counters. A gradient sharing memory with a parameter
  (``p.grad = p.detach()``) is refused. During a step (which releases the GIL) other threads
  must not write or resize the parameters or gradients.
"""

from __future__ import annotations

import difflib
import json
import re
import weakref
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from . import _core, _dist, _foreach
from ._core import SgdlabError

__all__ = [
    "ADOPT",
    "AdEMAMix",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Adan",
    "Lion",
    "Madam",
    "Muon",
    "NAdam",
    "Optimizer",
    "Prodigy",
    "RAdam",
    "RMSprop",
    "SGD",
    "SOAP",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "SgdlabError",
]

# Keys torch.optim, its schedulers and wrappers keep in a param group that are not
# hyper-parameters of the update.
_TORCH_KEYS = frozenset(
    {
        "params",
        "param_names",
        "initial_lr",
        "max_lr",
        "min_lr",
        "max_momentum",
        "base_momentum",
        "foreach",
        "fused",
        "capturable",
        "differentiable",
        "maximize",
    }
)
# Every key of every rule and the global keys: a group key among them that its rule does
# not take is a mistake (an error); any other key is kept for torch's tools, as torch.optim
# keeps it (a group's "name", SWALR's "swa_lr").
_SGDLAB_KEYS = frozenset(k for r in _core.rules() for k in _core.rule_keys(r))
# The global keys a parameter group may set for itself.
_GROUP_GLOBALS = frozenset({"cautious"})
# The parameter dtypes sgdlab steps.
_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# The engines a class can step with (``implementation=``).
_IMPLEMENTATIONS = ("auto", "rust", "torch")
# The keys every optimizer takes whatever its rule: the Rust library's one table.
_GLOBAL_KEYS: Tuple[str, ...] = tuple(_core.GLOBAL_KEYS)


# A string value is one word of the spec grammar (``bf16``, ``nearest``): never text that
# could carry separators into the spec it is written into.
_WORD = re.compile(r"[A-Za-z0-9_.+-]+")


def _text(value: Any, key: str = "hyper-parameter") -> str:
    """A hyper-parameter as spec text: exact for floats (shortest round-trip repr)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"`{key}` is a tensor of {value.numel()} elements, not a number")
        value = value.item()
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        if not _WORD.fullmatch(value):
            raise ValueError(
                f"`{key}` = {value!r} is not a number, a boolean or one word (letters, digits, "
                "`_.+-`): hyper-parameters are values, never spec text"
            )
        return value
    raise TypeError(f"`{key}` must be a bool, number or str, not {type(value).__name__}")


def _value(text: str) -> Any:
    """Spec text as a Python value (for ``defaults``)."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


class Optimizer(torch.optim.Optimizer):
    """Any sgdlab optimizer as a ``torch.optim.Optimizer``.

    Args:
        params: an iterable of tensors, or of dicts (parameter groups) whose other keys
            override the spec's hyper-parameters for that group (``{"params": ...,
            "weight_decay": 0}``).
        spec: an sgdlab optimizer spec, e.g. ``"lion:lr=1e-4"``; its keys are the defaults of
            every group.
        check_finite: check every gradient for NaN/inf before the step (an error names the
            tensor); ``False`` skips the check.
        skip_nonfinite: skip (and count) a step whose gradient is not finite, instead of
            raising.
        clip_norm: global-norm gradient clipping over all parameters, as
            ``torch.nn.utils.clip_grad_norm_`` before the step.
        implementation: ``"rust"`` (the Rust kernels: CPU tensors), ``"torch"`` (the same
            rules in torch operations: any device, ``torch.compile``), or ``"auto"`` (the
            Rust kernels when every parameter with a gradient is on the CPU at the first
            step, torch operations otherwise).
        shard_group: the ``torch.distributed`` process group over which the parameters are
            partitioned, when this optimizer steps one process's part of the model
            (``ZeroRedundancyOptimizer``: its process group). Clipping's global norm,
            ``normsgd`` and the finiteness check then sum over the group. DTensor parameters
            (FSDP2, tensor parallelism) need none: their device mesh says it.
    """

    def __init__(
        self,
        params: Iterable[Any],
        spec: str = "sgd",
        *,
        check_finite: bool = True,
        skip_nonfinite: bool = False,
        clip_norm: Optional[float] = None,
        implementation: str = "auto",
        shard_group: Any = None,
    ) -> None:
        rule, keys = _core.parse_spec(spec)
        defaults = {k: _value(v) for k, v in keys if k not in _GLOBAL_KEYS}
        defaults.setdefault("lr", _core.Optimizer(rule).lr)
        spec_globals = {k: v for k, v in keys if k in _GLOBAL_KEYS}
        self._init(
            params,
            rule,
            defaults,
            check_finite,
            skip_nonfinite,
            clip_norm,
            spec_globals=spec_globals,
            implementation=implementation,
            shard_group=shard_group,
            spec=spec,
        )

    # -- set-up shared by every class ------------------------------------------------------

    def _init(
        self,
        params: Iterable[Any],
        rule: str,
        defaults: dict[str, Any],
        check_finite: bool,
        skip_nonfinite: bool,
        clip_norm: Optional[float],
        maximize: bool = False,
        state_dtype: str = "param",
        rounding: str = "stochastic",
        spec_globals: Optional[dict[str, str]] = None,
        master_weights: bool = False,
        implementation: str = "auto",
        shard_group: Any = None,
        spec: Optional[str] = None,
    ) -> None:
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"implementation = {implementation!r}: must be one of {', '.join(map(repr, _IMPLEMENTATIONS))}"
            )
        self._implementation = implementation
        # The engine that steps: "rust" or "torch", fixed at the first step (or by a loaded state).
        self._engine_kind: Optional[str] = None if implementation == "auto" else implementation
        self._engine: Optional[_foreach.Engine] = None
        self._hp_cache: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
        self._rule = rule
        self._rule_keys = frozenset(_core.rule_keys(rule)) - frozenset(_GLOBAL_KEYS)
        self._global = {
            "check_finite": _text(bool(check_finite)),
            "skip_nonfinite": _text(bool(skip_nonfinite)),
        }
        if clip_norm is not None:
            self._global["clip_norm"] = _text(float(clip_norm))
        if state_dtype != "param":
            self._global["state_dtype"] = state_dtype
        if rounding != "stochastic":
            self._global["rounding"] = rounding
        if master_weights:
            self._global["master_weights"] = "true"
        self._global.update(spec_globals or {})
        self._maximize = bool(maximize)
        self._core: Optional[_core.Optimizer] = None
        self._applied: list[dict[str, str]] = []
        self._active: Optional[list[tuple[int, int]]] = None
        self._names: list[str] = []
        self._views: dict[int, tuple[int, np.ndarray]] = {}
        self._copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._shard_group = shard_group
        # The constructor's keys that apply to the whole optimizer. A wrapper that hands its
        # own keyword arguments to every group (ZeroRedundancyOptimizer) may repeat them in a
        # group, with the same value.
        self._whole_keys = {
            "spec": spec,
            "check_finite": check_finite,
            "skip_nonfinite": skip_nonfinite,
            "clip_norm": clip_norm,
            "state_dtype": self._global.get("state_dtype", "param"),
            "rounding": self._global.get("rounding", "stochastic"),
            "master_weights": self._global.get("master_weights") == "true",
            "implementation": implementation,
            "shard_group": shard_group,
        }
        # Whether a parameter is a DTensor, or the optimizer steps a partition: the step then
        # sums its norm and finiteness over the processes (set at each step).
        self._distributed = shard_group is not None
        super().__init__(params, defaults)
        self.state = _State(self.state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a parameter group, as ``torch.optim`` does; its keys override the defaults.
        ``"rule": NAME`` steps the group with another sgdlab rule, from that rule's defaults
        (Muon for the matrices, AdamW for the rest: ``{"params": ..., "rule": "adamw"}``).
        Keys that are no hyper-parameter of sgdlab (a group's ``"name"``) are kept."""
        if getattr(self, "_core", None) is not None:  # the Rust engine steps a fixed set
            if not self._switchable():
                raise RuntimeError(
                    "the Rust engine steps a fixed set of tensors: add parameter groups before the "
                    "first step, or step with implementation='torch' (or 'auto')"
                )
            self._switch_to_torch()
        explicit = set(param_group) if isinstance(param_group, dict) else set()
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            rule = group.get("rule")
            if rule is not None and rule != self._rule:
                self._own_rule_defaults(group, rule, explicit)
            # The group's hyper-parameters are validated now, as torch.optim does.
            keys = self._group_keys(group)
            body = ",".join(f"{k}={v}" for k, v in keys.items())
            glob = ",".join(f"{k}={v}" for k, v in self._global.items() if k not in keys)
            _core.Optimizer(f"{self._group_rule(group)}:{body},{glob}".replace(":,", ":").rstrip(":,"))
            for pj, p in enumerate(group["params"]):
                _check_tensor(p, f"parameter {len(self.param_groups) - 1}.{pj} (group.index)", self._engine_kind)
        except Exception:
            self.param_groups.pop()
            raise

    def _own_rule_defaults(self, group: dict[str, Any], rule: str, explicit: set[str]) -> None:
        """A group with its own rule: the optimizer's defaults that the rule does not take are
        dropped, and its keys not given start at the rule's defaults (as an sgdlab group
        with ``rule=`` does)."""
        if not isinstance(rule, str) or rule not in _core.rules():
            raise ValueError(f"parameter group rule {rule!r} is not an sgdlab rule (known: {', '.join(_core.rules())})")
        own = dict(_core.rule_values(rule))
        for k in list(group):
            if k in self.defaults and k not in explicit and k not in own:
                del group[k]
        for k, v in own.items():
            if k not in explicit:
                group[k] = _value(v)

    # torch-style names of a class's hyper-parameters and the sgdlab keys they set
    # ("betas" sets beta1, beta2 and beta3 in turn).
    _translate: dict[str, str] = {}
    # Keys of a class that select its rule or are read elsewhere (Adam's
    # decoupled_weight_decay): neither spec keys nor unknown.
    _class_keys: frozenset[str] = frozenset()

    def _group_keys(self, group: dict[str, Any]) -> dict[str, str]:
        """The group's hyper-parameters as sgdlab spec keys (text); other keys are kept but
        not read, except an sgdlab key that the group's rule does not take (an error)."""
        rule = self._group_rule(group)
        takes = self._rule_keys if rule == self._rule else frozenset(_core.rule_keys(rule)) - frozenset(_GLOBAL_KEYS)
        out: dict[str, str] = {}
        for k, v in group.items():
            if k in ("params", "rule") or k in _TORCH_KEYS or k in self._class_keys:
                continue
            if k in self._whole_keys:
                if not (v is self._whole_keys[k] or v == self._whole_keys[k]):
                    raise ValueError(
                        f"parameter group key `{k}` = {v!r}: `{k}` applies to the whole optimizer "
                        f"(it is {self._whole_keys[k]!r}); set it in the constructor"
                    )
                continue
            key = self._translate.get(k, k)
            if key == "betas" and isinstance(v, (tuple, list)):
                names = [n for n in ("beta1", "beta2", "beta3") if n in takes]
                if len(v) == 2 and "beta3" in group:
                    # Prodigy's signature: betas=(β₁, β₂) and its own beta3.
                    names = names[:2]
                if len(v) != len(names):
                    raise ValueError(f"`betas` has {len(v)} values, and {rule} takes {len(names)} ({', '.join(names)})")
                for name, b in zip(names, v):
                    out[name] = _text(_float(b, name), name)
            elif key in takes or key in _GROUP_GLOBALS:
                out[key] = _text(_float(v, key) if key == "lr" else v, key)
            elif key in _SGDLAB_KEYS or difflib.get_close_matches(key, takes, n=1, cutoff=0.8):
                # An sgdlab key of another rule, or a near miss of one of this rule's (a typo):
                # torch would keep it unread, and the step would silently use the default.
                raise ValueError(
                    f"parameter group key `{k}` is not a hyper-parameter of sgdlab's `{rule}` "
                    f"(it takes {', '.join(sorted(takes))})"
                )
        return out

    def _group_rule(self, group: dict[str, Any]) -> str:
        return group.get("rule") or self._rule

    def _specs(self) -> tuple[str, list[str], list[dict[str, str]]]:
        """The optimizer as sgdlab specs: its spec, one group spec per torch group, and each
        group's keys."""
        base = ",".join(f"{k}={v}" for k, v in self._global.items())
        groups, applied = [], []
        for gi, group in enumerate(self.param_groups):
            keys = self._group_keys(group)
            rule = self._group_rule(group)
            head = f"rule={rule}," if rule != self._rule else ""
            body = ",".join(f"{k}={v}" for k, v in keys.items())
            groups.append(f"{gi}.*:{head}{body}".rstrip(":,"))
            applied.append(keys)
        return f"{self._rule}:{base}", groups, applied

    def _build(self) -> None:
        """The Rust optimizer, at the first step: one sgdlab group per torch group."""
        spec, groups, self._applied = self._specs()
        self._core = _core.Optimizer(spec, groups)

    @torch.compiler.disable
    def _hyper(self, group: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The group's rule and every hyper-parameter of it as a Python value (defaults
        included), validated by the Rust spec parser; cached while the group's keys stay."""
        rule = self._group_rule(group)
        keys = self._group_keys(group)
        cache_key = (rule, tuple(keys.items()))
        hp = self._hp_cache.get(cache_key)
        if hp is None:
            body = ",".join(f"{k}={v}" for k, v in keys.items())
            values = _core.rule_values(f"{rule}:{body}".rstrip(":"))
            hp = {k: _value(v) for k, v in values}
            if len(self._hp_cache) > 64:
                self._hp_cache.clear()
            self._hp_cache[cache_key] = hp
        return rule, hp

    def _sync(self) -> None:
        """Hands every hyper-parameter a scheduler (or the user) changed to the Rust optimizer."""
        assert self._core is not None
        for gi, group in enumerate(self.param_groups):
            keys = self._group_keys(group)
            applied = self._applied[gi]
            if keys != applied:
                changed = {k: v for k, v in keys.items() if applied.get(k) != v}
                self._core.set_group_keys(gi + 1, changed)
                self._applied[gi] = keys

    def _arrays(self) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, int]]]:
        """numpy views (shared memory) of every parameter with a gradient, and of the
        gradients. A parameter's view is kept between steps while its storage stays the
        same (checked by address), which saves most of the per-tensor cost. A parameter
        that is not contiguous (``channels_last``, a transpose) steps on a contiguous copy
        that the step writes back (``self._copies``). A DTensor steps its local shard."""
        params, grads, active = [], [], []
        views = self._views
        self._copies = []
        distributed = self._shard_group is not None
        for gi, group in enumerate(self.param_groups):
            for pj, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                if _dist.is_dtensor(p) or _dist.is_dtensor(g):
                    distributed = True
                    self._refuse_shard(group, p, gi, pj)
                    g = _dist.local_grad(p, g)
                    p = _dist.local(p)
                if p.device.type != "cpu" or g.device.type != "cpu":
                    raise TypeError(
                        _why_not(p, g, f"parameter {gi}.{pj} (group.index)")
                        + " with implementation='rust'; implementation='torch' (or 'auto' before "
                        "the first step) steps tensors on any device"
                    )
                try:
                    if not g.is_contiguous():
                        g = g.contiguous()
                    ga = _numpy(g)
                    if p.is_contiguous():
                        cached = views.get(id(p))
                        # The whole layout, not only the address: `p.data = p.data.t()` keeps
                        # the pointer and (square) shape but not the strides.
                        key = (p.data_ptr(), tuple(p.shape), p.stride(), p.dtype)
                        if cached is None or cached[0] != key:
                            cached = (key, _numpy(p.detach()))
                            views[id(p)] = cached
                        view = cached[1]
                    else:
                        copy = p.detach().contiguous()
                        self._copies.append((p, copy))
                        view = _numpy(copy)
                except Exception as e:  # torch's reasons are less direct than ours
                    raise TypeError(_why_not(p, g, f"parameter {gi}.{pj}")) from e
                params.append(view)
                if self._maximize:
                    # bfloat16 bits: flip the sign bit (np.negative would negate the integers).
                    ga = ga ^ np.uint16(0x8000) if ga.dtype == np.uint16 else np.negative(ga)
                grads.append(ga)
                active.append((gi, pj))
        self._distributed = distributed
        return params, grads, active

    def _refuse_shard(self, group: dict[str, Any], p: Any, gi: int, pj: int) -> None:
        """Refuses a DTensor shard for a rule that reads whole tensors."""
        if _dist.is_sharded(p):
            own = group.get("cautious")
            cautious = self._global.get("cautious") == "true" if own is None else bool(own)
            _dist.refuse_whole_tensor(self._group_rule(group), cautious, p, f"{gi}.{pj} (group.index)")

    def _parts(self, active: list[tuple[int, int]]) -> Optional[_dist.Parts]:
        """How this step's tensors are parts of a model held by several processes (None:
        each process steps the whole model)."""
        if not self._distributed:
            return None
        return _dist.parts_of([self.param_groups[gi]["params"][pj] for gi, pj in active], self._shard_group)

    def _totals(self, grads: list[np.ndarray], parts: _dist.Parts) -> tuple[float, int, int]:
        """The whole model's (norm², non-finite parts, size) for the Rust step: this
        process's shards summed over the processes, plus the tensors every process holds."""
        assert self._core is not None
        own = self._core.local_totals([g for g, s in zip(grads, parts.sharded) if s])
        whole = self._core.local_totals([g for g, s in zip(grads, parts.sharded) if not s])
        norm_sq = own[0] if own[1] == 0 else 0.0
        summed = parts.sum(torch.tensor([norm_sq, float(own[1]), float(own[2])], dtype=torch.float64)).tolist()
        return summed[0] + whole[0], int(summed[1]) + whole[1], int(summed[2]) + whole[2]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step over every parameter with a gradient; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.state.written:
            self._adopt_written()
        if self._engine_kind is None:
            self._engine_kind = self._choose_engine()
        if self._engine_kind == "rust" and not self._step_rust(loss):
            self._switch_to_torch()
        if self._engine_kind == "torch":
            self._step_torch(loss)
        return loss

    def _adopt_written(self) -> None:
        """Takes the state entries assigned from outside (``optimizer.state[p] = {...}`` in
        ``torch.optim``'s layout: ``ZeroRedundancyOptimizer.load_state_dict``, Lightning's
        device moves) as a loaded state: the rest of the state is kept, exactly."""
        written = self.state.written
        current = self._state_dict()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p in written:
                    current["state"][index] = dict(self.state[p])
                index += 1
        written.clear()
        current.pop("sgdlab")
        self._load_torch_optim(current)

    def _choose_engine(self) -> str:
        """``implementation="auto"``: the Rust kernels when every parameter with a gradient
        is on the CPU, torch operations otherwise."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and (p.device.type != "cpu" or p.grad.device.type != "cpu"):
                    return "torch"
        return "rust"

    @property
    def implementation(self) -> Optional[str]:
        """The engine that steps: ``"rust"`` or ``"torch"`` (None before the first step of
        ``implementation="auto"``)."""
        return self._engine_kind

    def _works(self, with_grads: bool) -> tuple[list[_foreach.Work], list[tuple[int, int]]]:
        """The torch engine's view of the groups: the parameters with a gradient
        (``with_grads``), or those with state."""
        works, active, index = [], [], 0
        cautious = self._global.get("cautious") == "true"
        state = self.state
        distributed = self._shard_group is not None
        for gi, group in enumerate(self.param_groups):
            ps, gs, names, states, idx = [], [], [], [], []
            for pj, param in enumerate(group["params"]):
                # A DTensor's state is kept for its local shard, under the DTensor.
                p = _dist.local(param)
                if with_grads:
                    g = param.grad
                    if g is None:
                        continue
                    if _dist.is_dtensor(param) or _dist.is_dtensor(g):
                        distributed = True
                        self._refuse_shard(group, param, gi, pj)
                        g = _dist.local_grad(param, g)
                    st = state[param]
                    if p.dtype not in _DTYPES:
                        _check_tensor(p, f"parameter {gi}.{pj} (group.index)", "torch")
                    if g.is_sparse:
                        raise TypeError(f"the gradient of parameter {gi}.{pj} is sparse: sgdlab steps dense tensors")
                    if self._maximize:
                        g = torch.neg(g)
                    gs.append(g)
                else:
                    st = state.get(param)
                    if not st:
                        continue
                    distributed = distributed or _dist.is_dtensor(param)
                ps.append(p)
                names.append((gi, pj))
                states.append(st)
                idx.append(index)
                active.append((gi, pj))
                index += 1
            if ps:
                rule, hp = self._hyper(group)
                own = group.get("cautious")
                works.append(
                    _foreach.Work(rule, hp, cautious if own is None else bool(own), ps, gs, names, states, idx)
                )
        self._distributed = distributed
        return works, active

    def _step_torch(self, loss: Any) -> None:
        """One step of the torch engine."""
        if self._engine is None:
            self._engine = self._new_engine()
        works, active = self._works(with_grads=True)
        if not works:
            raise ValueError("no parameter has a gradient: call backward() before step()")
        loss_value = None
        if loss is not None and (self._engine.flag("check_finite") or any(w.rule == "lossprop" for w in works)):
            loss_value = float(loss)
        self._engine.step(works, loss_value, self._parts(active))
        self._active = active

    @torch.compiler.disable
    def _new_engine(self) -> _foreach.Engine:
        """The torch engine, once the whole optimizer is validated as the Rust engine does."""
        spec, groups, _ = self._specs()
        _core.Optimizer(spec, groups)
        if self._global.get("state_dtype") == "q8":
            raise ValueError(
                "state_dtype='q8' (8-bit blockwise state) is stepped by the Rust engine only: "
                "keep the parameters on the CPU, or use state_dtype='bf16' on other devices"
            )
        return _foreach.Engine(dict(self._global))

    # The Rust engine's step runs outside any torch.compile graph: it hands numpy views of
    # the tensors to the Rust kernels.
    @torch.compiler.disable
    def _step_rust(self, loss: Any) -> bool:
        """One step of the Rust engine; False (nothing done) when the set of parameters with a
        gradient changed and ``implementation="auto"`` hands the step to the torch engine."""
        params, grads, active = self._arrays()
        if self._active is None:
            if not active:
                raise ValueError("no parameter has a gradient: call backward() before step()")
            if self._core is None:
                self._build()
            self._names = [f"{gi}.{pj}" for gi, pj in active]
        elif active != self._active:
            if self._switchable():
                return False
            had, has = set(self._active), set(active)
            lost, new = sorted(had - has), sorted(has - had)
            what = (
                f"parameter {lost[0][0]}.{lost[0][1]} (group.index) had a gradient at the first step and has none now"
                if lost
                else f"parameter {new[0][0]}.{new[0][1]} (group.index) has a gradient now and had none at the first step"
            )
            torch_engine = (
                "; 8-bit state (state_dtype='q8') has no torch engine to hand it to"
                if self._global.get("state_dtype") == "q8"
                else ", or step with implementation='torch', which counts steps per parameter as "
                "torch.optim"
            )
            raise ValueError(
                f"{what}: the Rust engine steps the set of tensors of its first step (zero its "
                "gradient instead of setting it to None, e.g. zero_grad(set_to_none=False)"
                f"{torch_engine})"
            )
        assert self._core is not None
        self._sync()
        loss_value = None
        if loss is not None:
            loss_value = float(loss)
        bf16 = [p.dtype == np.uint16 for p in params]
        if any(bf16) and not all(bf16):
            raise TypeError(
                "the parameters mix bfloat16 with float32/float64: one optimizer steps one "
                "parameter dtype (use one optimizer per dtype)"
            )
        parts = self._parts(active)
        totals = None if parts is None else self._totals(grads, parts)
        if any(bf16):
            self._core.step_bf16(params, grads, loss_value, names=self._names, totals=totals)
        else:
            self._core.step(params, grads, loss_value, names=self._names, totals=totals)
        for p, copy in self._copies:
            p.copy_(copy)
        self._copies = []
        if active != self._active or not self.state:
            self._active = active
            self._expose()
        self._changed(active)
        return True

    def _switchable(self) -> bool:
        """Whether the Rust engine's state may move to the torch engine (exactly, buffers,
        per-tensor scalars and master copies): ``implementation="auto"``."""
        return (
            self._implementation == "auto"
            and self._core is not None
            and self._global.get("state_dtype") != "q8"
        )

    def _switch_to_torch(self) -> None:
        """Moves the Rust engine's state to the torch engine (every tensor at the optimizer's
        step count, as the Rust engine counts), which then steps whichever parameters have a
        gradient, counting per parameter as torch.optim does."""
        assert self._core is not None
        skipped = self._core.skipped
        loaded, merged = self._torch_style_state(self._state_dict())
        self._install_torch_state(loaded, merged, None, skipped)

    def _changed(self, active: list[tuple[int, int]]) -> None:
        """Tells autograd that the parameters changed in place (their version counters), as
        torch.optim's in-place updates do: a graph built before the change then refuses
        ``backward()`` instead of using the new weights silently."""
        torch.autograd.graph.increment_version(
            [self.param_groups[gi]["params"][pj] for gi, pj in active]
        )

    # -- state ---------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Applied steps."""
        if self._engine is not None:
            return self._engine.steps
        return 0 if self._core is None else self._core.steps

    @property
    def skipped(self) -> int:
        """Steps skipped for a non-finite gradient (``skip_nonfinite=True``)."""
        if self._engine is not None:
            return self._engine.skipped
        return 0 if self._core is None else self._core.skipped

    @property
    def core(self) -> Optional[_core.Optimizer]:
        """The Rust optimizer (``sgdlab.Optimizer``), None before the first step."""
        return self._core

    def state_dict(self) -> dict[str, Any]:
        """The state: ``torch.optim``'s ``state`` and ``param_groups`` layout, plus the exact
        sgdlab state as checkpoint bytes under ``"sgdlab"`` (Rust engine) or the step counts
        (torch engine)."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        out = self._state_dict()
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, out)
            if result is not None:
                out = result
        return out

    def _state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict` without its hooks."""
        groups, index = [], 0
        ids: dict[tuple[int, int], int] = {}
        for gi, group in enumerate(self.param_groups):
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            for pj in range(len(group["params"])):
                ids[(gi, pj)] = index + pj
            index += len(group["params"])
            groups.append(packed)
        state: dict[int, dict[str, Any]] = {}
        if self._engine is not None:
            # The torch engine's state in torch.optim's layout: the buffers (by reference, as
            # torch.optim), each parameter's `step`, and per-parameter scalars as 0-d tensors
            # (NAdam's `mu_product`), so that torch.optim loads it.
            for gi, group in enumerate(self.param_groups):
                for pj, p in enumerate(group["params"]):
                    live = self.state.get(p)
                    if live:
                        entry = {k: _dist.like(v, p) for k, v in live.items() if k != "scalars"}
                        scalars = live.get("scalars", {})
                        entry["step"] = torch.tensor(float(scalars.get("t", 0)))
                        for k, v in scalars.items():
                            if k != "t":
                                entry[k] = torch.tensor(v, dtype=torch.float64)
                        state[ids[(gi, pj)]] = entry
            out = {
                "state": state,
                "param_groups": groups,
                "sgdlab": {
                    "engine": "torch",
                    "steps": self._engine.steps,
                    "skipped": self._engine.skipped,
                    "eval": self._engine.in_eval_mode,
                    "active": None if self._active is None else [list(a) for a in self._active],
                },
            }
            return out
        if self._core is not None and self._active is not None:
            for t, (gi, pj) in enumerate(self._active):
                p = self.param_groups[gi]["params"][pj]
                state[ids[(gi, pj)]] = {k: self._rust_value(k, t, gi, p) for k in self._rust_keys(t, gi)}
        out = {
            "state": state,
            "param_groups": groups,
            "sgdlab": {
                "bytes": None if self._core is None else self._core.to_bytes(),
                "active": None if self._active is None else [list(a) for a in self._active],
            },
        }
        return out

    def _rust_keys(self, t: int, gi: int) -> list[str]:
        """The keys of tensor ``t``'s state in the Rust engine, as a ``torch.optim`` entry:
        ``step``, the rule's buffers, its per-tensor scalars and ``master``."""
        assert self._core is not None
        rule = _foreach.RULES[self._group_rule(self.param_groups[gi])]
        keys = ["step", *self._core.slot_names(t)]
        if self._core.tensor_scalars(t):
            keys.extend(rule.scalars)
        if self._global.get("master_weights") == "true":  # bfloat16 parameters only
            keys.append("master")
        return keys

    def _rust_value(self, key: str, t: int, gi: int, p: Any) -> Any:
        """A copy of the Rust engine's state ``key`` of tensor ``t`` (parameter ``p`` of group
        ``gi``) as a ``torch.optim`` entry holds it: a tensor shaped as ``p`` (a DTensor for a
        DTensor), ``step`` and the scalars as 0-d tensors."""
        core = self._core
        assert core is not None
        if key == "step":
            return torch.tensor(float(core.steps))
        if key == "master":
            return _dist.like(torch.from_numpy(core.master(t)).reshape(_dist.local(p).shape), p)
        buf = core.state(key, t)
        if buf is not None:
            return _dist.like(torch.from_numpy(buf), p)
        names = _foreach.RULES[self._group_rule(self.param_groups[gi])].scalars
        if key in names:
            return torch.tensor(core.tensor_scalars(t)[names.index(key)], dtype=torch.float64)
        raise KeyError(key)

    def _expose(self) -> None:
        """Shows the Rust engine's state in ``self.state`` (as ``torch.optim`` keeps it), read
        from the engine on access: code that inspects ``optimizer.state[p]``, and
        ``torch.distributed.checkpoint``, which takes a non-empty ``state`` for an optimizer
        that has stepped."""
        self.state.reset()
        if self._core is None or self._active is None:
            return
        for t, (gi, pj) in enumerate(self._active):
            p = self.param_groups[gi]["params"][pj]
            self.state.put(p, _RustState(self, t, gi, p))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a ``state_dict()`` of an sgdlab.torch optimizer with the same groups, or a
        ``torch.optim`` state dict of the same algorithm (its buffers, per-parameter step
        counts and group hyper-parameters, exactly; the torch engine then steps, as it
        counts steps per parameter as torch.optim does). A state of another algorithm (other
        buffers) is refused, naming both."""
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved = state_dict.get("sgdlab")
        if saved is None and "state" in state_dict and "param_groups" in state_dict:
            self._load_torch_optim(state_dict)
            for hook in self._optimizer_load_state_dict_post_hooks.values():
                hook(self)
            return
        if not isinstance(saved, dict) or ("bytes" not in saved and saved.get("engine") != "torch"):
            raise ValueError(
                "not a state dict of an sgdlab.torch optimizer or of torch.optim (no `sgdlab` "
                "entry, no `state` and `param_groups`)"
            )
        engine = "torch" if saved.get("engine") == "torch" else "rust"
        if self._implementation not in ("auto", engine):
            raise ValueError(
                f"the state dict is the {engine} engine's, and this optimizer steps with "
                f"implementation={self._implementation!r}: load it into an optimizer with "
                f"implementation={engine!r} (or 'auto')"
            )
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(groups)} parameter groups, the optimizer {len(self.param_groups)}"
            )
        for gi, (mine, theirs) in enumerate(zip(self.param_groups, groups)):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError(
                    f"parameter group {gi} has {len(mine['params'])} parameters, the state dict's {len(theirs['params'])}"
                )
        if engine == "torch":
            self._load_torch_state(saved, state_dict.get("state", {}), groups)
            for hook in self._optimizer_load_state_dict_post_hooks.values():
                hook(self)
            return
        core = None if saved["bytes"] is None else _core.Optimizer.from_bytes(saved["bytes"])
        active = _checked_active(saved.get("active"), groups, core)
        for mine, theirs in zip(self.param_groups, groups):
            for k, v in theirs.items():
                if k != "params":
                    mine[k] = v
        self._engine_kind = None if core is None and self._implementation == "auto" else "rust"
        self._engine = None
        self._core, self._active = core, active
        self._names = [] if active is None else [f"{gi}.{pj}" for gi, pj in active]
        self._expose()
        if core is not None:
            # The core holds the hyper-parameters of its last step; the groups may hold newer
            # ones (a scheduler stepped after it): hand all of them over at the next step.
            self._applied = [{} for _ in self.param_groups]
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _load_torch_optim(self, state_dict: dict[str, Any]) -> None:
        """Migrates a ``torch.optim`` state dict (checked before anything changes)."""
        loaded, merged = self._torch_style_state(state_dict)
        if self._install_rust_state(loaded, merged):
            return
        if self._implementation == "rust":
            raise ValueError(
                "this torch.optim state dict has parameters at different step counts (or on "
                "another device, or of several dtypes), and the Rust engine steps every tensor "
                "at one count: load it with implementation='torch' (or 'auto')"
            )
        self._install_torch_state(loaded, merged, None, 0)

    def _install_rust_state(self, loaded: dict[Any, dict[str, Any]], merged: list[dict[str, Any]]) -> bool:
        """Installs a ``torch.optim``-layout state in the Rust engine, exactly, when it is one
        the Rust engine could have made: every parameter with state at the same step count,
        on the CPU, of one dtype (a state saved from the Rust engine through
        ``torch.distributed.checkpoint``, ZeRO or ``torch.optim``). False (nothing changed)
        otherwise, or with ``implementation="torch"``, or while the torch engine steps."""
        if self._implementation == "torch" or (self._implementation == "auto" and self._engine_kind == "torch"):
            return False
        if not loaded or len({e["scalars"]["t"] for e in loaded.values()}) != 1:
            return False
        t = next(iter(loaded.values()))["scalars"]["t"]
        locals_ = {p: _dist.local(p) for p in loaded}
        if t < 1 or any(lp.device.type != "cpu" for lp in locals_.values()):
            return False
        if len({lp.dtype for lp in locals_.values()}) != 1:
            return False
        pdtype = next(iter(locals_.values())).dtype
        master = self._global.get("master_weights") == "true"
        if pdtype == torch.bfloat16 and master and not all("master" in e for e in loaded.values()):
            return False
        dtype = torch.float64 if pdtype == torch.float64 else torch.float32
        saved = [dict(g) for g in self.param_groups]
        for mine, group in zip(self.param_groups, merged):
            mine.update({k: v for k, v in group.items() if k != "params"})
        try:
            spec, groups, applied = self._specs()
            core = _core.Optimizer(spec, groups)
            meta = dict(core.state_dict()["metadata"])
            active = [
                (gi, pj) for gi, g in enumerate(self.param_groups) for pj, p in enumerate(g["params"]) if p in loaded
            ]
            names = [f"{gi}.{pj}" for gi, pj in active]
            buffers: dict[str, np.ndarray] = {}
            layout, scalars = [], []
            for (gi, pj), name in zip(active, names):
                p = self.param_groups[gi]["params"][pj]
                entry, lp = loaded[p], locals_[p]
                layout.append([name, list(lp.shape)])
                rule = _foreach.RULES[self._group_rule(self.param_groups[gi])]
                scalars.append([float(entry["scalars"][k]) for k in rule.scalars] if rule.scalars else [])
                for k, v in entry.items():
                    if k != "scalars":
                        buffers[f"{k}/{name}"] = v.to(dtype).contiguous().numpy()
            meta.update(
                dtype="f64" if dtype == torch.float64 else "f32",
                layout=json.dumps(layout),
                tensor_scalars=json.dumps(scalars),
                step=str(t),
                skipped="0",
            )
            if groups:
                meta["tensor_groups"] = json.dumps([gi + 1 for gi, _ in active])
            core.load_state_dict({"metadata": meta, "buffers": buffers})
        except (KeyError, ValueError, TypeError, SgdlabError):
            # A state the Rust engine cannot hold (a scalar it does not keep, a buffer of
            # another shape): the torch engine takes it as torch.optim would.
            for mine, old in zip(self.param_groups, saved):
                mine.clear()
                mine.update(old)
            return False
        self._core, self._active, self._names, self._applied = core, active, names, applied
        self._engine, self._engine_kind = None, "rust"
        self._expose()
        return True

    def _load_torch_state(self, saved: dict[str, Any], state: Any, groups: list[dict[str, Any]]) -> None:
        """Loads the torch engine's state dict (checked before anything changes)."""
        for key in ("steps", "skipped"):
            if not isinstance(saved.get(key), int) or isinstance(saved.get(key), bool) or saved[key] < 0:
                raise ValueError(f"corrupt state dict: `sgdlab.{key}` is {saved.get(key)!r}, not a count")
        loaded, merged = self._torch_style_state({"state": state, "param_groups": groups})
        self._install_torch_state(loaded, merged, saved["steps"], saved["skipped"])
        self._engine.in_eval_mode = bool(saved.get("eval", False))
        active = saved.get("active")
        self._active = None if active is None else [tuple(a) for a in active]

    def _torch_style_state(self, state_dict: dict[str, Any]) -> tuple[dict[Any, dict[str, Any]], list[dict[str, Any]]]:
        """The per-parameter state of a state dict in torch.optim's layout, as the torch
        engine keeps it, and the groups' hyper-parameters merged over this optimizer's; each
        entry checked against its group's rule (its buffers, shapes and step count)."""
        groups, state = state_dict["param_groups"], state_dict["state"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(groups)} parameter groups, the optimizer {len(self.param_groups)}"
            )
        if not isinstance(state, dict):
            raise ValueError(f"corrupt state dict: `state` is a {type(state).__name__}, not a dict")
        flat, group_of = [], []
        # The state's keys name parameters as its groups' "params" lists do (indices, or the
        # names of torch.distributed.checkpoint), by position, as torch.optim maps them.
        position: dict[Any, int] = {}
        for gi, (mine, theirs) in enumerate(zip(self.param_groups, groups)):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError(
                    f"parameter group {gi} has {len(mine['params'])} parameters, the state dict's {len(theirs['params'])}"
                )
            for key in theirs["params"]:
                try:
                    if key in position:
                        raise ValueError(f"corrupt state dict: parameter {key!r} is in its groups twice")
                    position[key] = len(position)
                except TypeError:
                    raise ValueError(f"corrupt state dict: parameter key {key!r} of group {gi} is not hashable") from None
            flat.extend(mine["params"])
            group_of.extend([gi] * len(mine["params"]))
        merged = []
        for mine, theirs in zip(self.param_groups, groups):
            group = dict(mine)
            group.update({k: v for k, v in theirs.items() if k != "params"})
            merged.append(group)
        lowp = self._global.get("state_dtype") == "bf16"
        loaded: dict[Any, dict[str, Any]] = {}
        for key, entry in state.items():
            index = position.get(key) if isinstance(key, (int, str)) and not isinstance(key, bool) else None
            if index is None or not isinstance(entry, dict):
                raise ValueError(f"corrupt state dict: state entry {key!r} names no parameter")
            p, group = flat[index], merged[group_of[index]]
            try:
                rule, hp = self._hyper(group)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"the state dict's parameter group {group_of[index]} is not one of sgdlab's "
                    f"`{self._group_rule(self.param_groups[group_of[index]])}`: {e}"
                ) from e
            want = set(_foreach.slot_names(rule, hp))
            scalars = set(_foreach.RULES[rule].scalars)
            have = {k for k, v in entry.items() if k not in ("step", "master") and k not in scalars and v is not None}
            if have != want:
                raise ValueError(
                    f"the state of parameter {index} holds {sorted(have) or 'no buffers'}, and sgdlab's "
                    f"`{rule}` keeps {sorted(want) or 'none'}: not a state of the same algorithm"
                )
            if "step" not in entry:
                raise ValueError(f"the state of parameter {index} has no `step`")
            t = float(entry["step"])
            if not (t >= 0 and t == int(t)):
                raise ValueError(f"the state of parameter {index} has step {t}, not a count")
            mine_entry: dict[str, Any] = {"scalars": {"t": int(t)}}
            for k in scalars & set(entry):
                mine_entry["scalars"][k] = float(entry[k])
            lp = _dist.local(p)
            names = list(_foreach.slot_names(rule, hp))
            shape_of = _foreach.RULES[rule].slot_shape
            for k in want | ({"master"} & set(entry)):
                v = entry[k]
                # A buffer's own shape (SOAP's d×d statistics), the parameter's otherwise.
                shape = tuple(p.shape) if shape_of is None or k == "master" else shape_of(hp, names.index(k), tuple(p.shape))
                if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape:
                    raise ValueError(f"the state `{k}` of parameter {index} is not a tensor of shape {list(shape)}")
                v = _dist.local_state(v.detach(), p).to(device=lp.device)
                if k == "master":
                    mine_entry[k] = v.to(torch.float32).clone()
                elif lowp:
                    mine_entry[k] = v.to(torch.bfloat16).clone()
                else:
                    mine_entry[k] = v.to(torch.float32 if lp.dtype == torch.bfloat16 else lp.dtype).clone()
            loaded[p] = mine_entry
        return loaded, merged

    def _install_torch_state(
        self, loaded: dict[Any, dict[str, Any]], merged: list[dict[str, Any]], steps: Optional[int], skipped: int
    ) -> None:
        """Installs per-parameter state as the torch engine's; its step count is ``steps``, or
        the largest per-parameter count when None (a state without the optimizer's own)."""
        if steps is None:
            steps = max((e["scalars"]["t"] for e in loaded.values()), default=0)
        for mine, group in zip(self.param_groups, merged):
            mine.update({k: v for k, v in group.items() if k != "params"})
        self.state.reset()
        for p, entry in loaded.items():
            self.state.put(p, entry)
        engine = _foreach.Engine(dict(self._global))
        engine.steps, engine.skipped = steps, skipped
        self._engine, self._engine_kind, self._core, self._active = engine, "torch", None, None

    # -- Schedule-Free -------------------------------------------------------------------

    @torch.no_grad()
    def eval(self) -> None:
        """Puts the evaluation point in the parameters (Schedule-Free's x; a no-op for rules
        without one), as the schedulefree package's ``optimizer.eval()``."""
        if self._engine is not None:
            self._engine.eval_mode(self._works(with_grads=False)[0])
            return
        if self._core is not None and not self._core.in_eval_mode:
            params, _, names, _ = self._arrays_of_active()
            if all(p.dtype != np.uint16 for p in params):  # bf16: no rule with an eval point
                self._core.eval_mode(params, names=names)
                self._changed(self._active)

    @torch.no_grad()
    def train(self) -> None:
        """Puts the training point back after :meth:`eval`."""
        if self._engine is not None:
            self._engine.train_mode(self._works(with_grads=False)[0])
            return
        if self._core is not None and self._core.in_eval_mode:
            params, _, names, _ = self._arrays_of_active()
            self._core.train_mode(params, names=names)
            self._changed(self._active)

    def _arrays_of_active(self):
        assert self._active is not None
        params = [_numpy(self.param_groups[gi]["params"][pj].detach()) for gi, pj in self._active]
        return params, None, self._names, None

    def __repr__(self) -> str:
        return f"sgdlab.torch.{type(self).__name__}({self._rule}, {len(self.param_groups)} groups, {self.steps} steps)"

    _OWN = (
        "_rule",
        "_rule_keys",
        "_global",
        "_maximize",
        "_core",
        "_applied",
        "_active",
        "_names",
        "_implementation",
        "_engine_kind",
        "_engine",
        "_distributed",
    )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({k: getattr(self, k) for k in self._OWN})
        # The torch engine's entries; the Rust engine's live in `_core`.
        state["state"] = defaultdict(dict, {p: e for p, e in self.state.items() if not isinstance(e, _RustState)})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_shard_group", None)
        state.setdefault("_distributed", False)
        super().__setstate__(state)
        self.state = _State(self.state)
        self._views = {}  # views of the unpickled tensors are made at the next step
        self._copies = []
        self._hp_cache = {}
        if self._engine is None:
            self._expose()


class _State(defaultdict):
    """``torch.optim``'s ``optimizer.state`` (a ``defaultdict(dict)`` keyed by parameter),
    noting the entries assigned from outside in ``torch.optim``'s layout — a ZeRO or
    Lightning load writes ``optimizer.state[p] = {...}`` — which the next step adopts."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(dict, items)
        #: Parameters whose entry was assigned from outside since the last step.
        self.written: set[Any] = set()

    def __setitem__(self, key: Any, value: Any) -> None:
        # An empty dict is the defaultdict's own new entry; the torch engine's entries carry
        # `scalars`; the Rust engine's are views.
        if isinstance(value, Mapping) and value and "scalars" not in value and not isinstance(value, _RustState):
            self.written.add(key)
        super().__setitem__(key, value)

    def put(self, key: Any, value: Any) -> None:
        """An entry the optimizer itself sets."""
        super().__setitem__(key, value)

    def reset(self) -> None:
        """Empties the state (the optimizer's own reset, not a write from outside)."""
        self.clear()
        self.written.clear()

    def __reduce__(self) -> Any:
        return (_State, (dict(self),))


class _RustState(Mapping):
    """One parameter's state in the Rust engine as ``torch.optim`` shows it: ``step``, the
    rule's buffers (``exp_avg``, ...), its per-tensor scalars and the ``master`` copy, each
    read from the engine on access (a copy; a DTensor for a DTensor parameter). Read-only:
    ``optimizer.state[p] = {...}`` replaces the entry, and the next step adopts it."""

    __slots__ = ("_opt", "_t", "_gi", "_p")

    def __init__(self, opt: "Optimizer", t: int, gi: int, p: Any) -> None:
        self._opt = weakref.ref(opt)
        self._t, self._gi, self._p = t, gi, p

    def _owner(self) -> "Optimizer":
        opt = self._opt()
        if opt is None or opt._core is None:
            raise RuntimeError("the optimizer of this state entry is gone (or no longer steps with the Rust engine)")
        return opt

    def __getitem__(self, key: str) -> Any:
        opt = self._owner()
        if key not in opt._rust_keys(self._t, self._gi):
            raise KeyError(key)
        return opt._rust_value(key, self._t, self._gi, self._p)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner()._rust_keys(self._t, self._gi))

    def __len__(self) -> int:
        return len(self._owner()._rust_keys(self._t, self._gi))

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError(
            "the Rust engine's state is read-only through optimizer.state[p][key]: assign the "
            "whole entry (optimizer.state[p] = {...}, in torch.optim's layout), or use load_state_dict"
        )

    def __repr__(self) -> str:
        return f"{{{', '.join(map(repr, self))}}} (the Rust engine's state of tensor {self._t})"


def _checked_active(active: Any, groups: list[dict[str, Any]], core: Optional[_core.Optimizer]) -> Optional[list[tuple[int, int]]]:
    """The ``active`` entry of a state dict, checked: (group, index) pairs of existing
    parameters, each once, one per tensor of the saved optimizer and named as its tensors."""
    if active is None:
        if core is not None and core.layout is not None:
            raise ValueError("corrupt state dict: the optimizer has stepped but `active` is None")
        return None
    if not isinstance(active, (list, tuple)):
        raise ValueError(f"corrupt state dict: `active` is a {type(active).__name__}, not a list")
    out = []
    for entry in active:
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in entry)
        ):
            raise ValueError(f"corrupt state dict: `active` entry {entry!r} is not a pair of ints")
        gi, pj = entry
        if not (0 <= gi < len(groups) and 0 <= pj < len(groups[gi]["params"])):
            raise ValueError(
                f"corrupt state dict: `active` names parameter {gi}.{pj}, which its "
                f"{len(groups)} parameter groups do not have"
            )
        out.append((gi, pj))
    if len(set(out)) != len(out):
        raise ValueError("corrupt state dict: `active` names a parameter twice")
    layout = None if core is None else core.layout
    names = None if layout is None else [name for name, _ in layout]
    if names is not None and names != [f"{gi}.{pj}" for gi, pj in out]:
        raise ValueError("corrupt state dict: `active` does not match the tensors of the optimizer's state")
    return out


def _numpy(t: Any) -> np.ndarray:
    """A numpy view (shared memory) of a CPU tensor; bfloat16 as uint16 bits."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _why_not(p: Any, g: Any, what: str) -> str:
    """Why a parameter or its gradient cannot be stepped, in sgdlab's words."""
    for t, kind in ((p, what), (g, f"the gradient of {what}")):
        if t.device.type != "cpu":
            return f"{kind} is on {t.device}: sgdlab steps CPU tensors"
        if t.is_sparse:
            return f"{kind} is sparse: sgdlab steps dense tensors"
        if t.dtype not in (torch.float32, torch.float64, torch.bfloat16):
            return f"{kind} is {t.dtype}: sgdlab steps float32, float64 or bfloat16 tensors"
    return f"{what} or its gradient cannot be viewed as a numpy array"


def _check_tensor(p: Any, what: str, engine: Optional[str]) -> None:
    """A parameter either engine can step: a float32, float64 or bfloat16 tensor (on the
    CPU for the Rust engine)."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{what} is a {type(p).__name__}, not a torch.Tensor")
    if engine == "rust" and p.device.type != "cpu":
        raise TypeError(
            f"{what} is on {p.device}: implementation='rust' steps CPU tensors "
            "(implementation='torch' or 'auto' steps tensors on any device)"
        )
    if p.dtype not in (torch.float32, torch.float64, torch.bfloat16):
        raise TypeError(f"{what} is {p.dtype}: sgdlab steps float32, float64 or bfloat16 tensors")


def _float(x: Any, key: str = "hyper-parameter") -> float:
    """A number (a float, int, bool or one-element tensor); text is refused, not parsed."""
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, (str, bytes)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{key}` must be a number, not {type(x).__name__} {x!r}")
    return float(x)


def _unsupported(**flags: Any) -> None:
    for name, value in flags.items():
        if value:
            raise ValueError(f"{name}=True is not supported by sgdlab (CPU kernels, no autograd through the step)")


class _TorchNamed(Optimizer):
    """A class with a reference package's signature: its keyword names are translated to
    sgdlab's keys (``_translate``; ``betas`` to ``beta1``, ``beta2``, ``beta3``)."""


class Adam(_TorchNamed):
    """``torch.optim.Adam`` on sgdlab's kernels (``decoupled_weight_decay=True``: AdamW)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        decoupled_weight_decay: bool = False,
        check_finite: bool = True,
        skip_nonfinite: bool = False,
        implementation: str = "auto",
        shard_group: Any = None,
        state_dtype: str = "param",
        rounding: str = "stochastic",
        master_weights: bool = False,
    ) -> None:
        _unsupported(capturable=capturable, differentiable=differentiable)
        defaults = dict(
            lr=_float(lr),
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        self._init(params, "adam", defaults, check_finite, skip_nonfinite, None, maximize, state_dtype, rounding,
                   master_weights=master_weights, implementation=implementation, shard_group=shard_group)

    _class_keys = frozenset({"decoupled_weight_decay"})

    def _group_rule(self, group: dict[str, Any]) -> str:
        return group.get("rule") or ("adamw" if group.get("decoupled_weight_decay") else "adam")


class AdamW(_TorchNamed):
    """``torch.optim.AdamW`` on sgdlab's kernels."""

    _class_keys = frozenset({"decoupled_weight_decay"})

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        check_finite: bool = True,
        skip_nonfinite: bool = False,
        implementation: str = "auto",
        shard_group: Any = None,
        state_dtype: str = "param",
        rounding: str = "stochastic",
        master_weights: bool = False,
    ) -> None:
        _unsupported(capturable=capturable, differentiable=differentiable)
        defaults = dict(lr=_float(lr), betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        self._init(params, "adamw", defaults, check_finite, skip_nonfinite, None, maximize, state_dtype, rounding,
                   master_weights=master_weights, implementation=implementation, shard_group=shard_group)


class SGD(_TorchNamed):
    """``torch.optim.SGD`` on sgdlab's kernels."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        check_finite: bool = True,
        skip_nonfinite: bool = False,
        implementation: str = "auto",
        shard_group: Any = None,
    ) -> None:
        _unsupported(differentiable=differentiable)
        defaults = dict(
            lr=_float(lr), momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
        )
        self._init(params, "sgd", defaults, check_finite, skip_nonfinite, None, maximize, implementation=implementation,
                   shard_group=shard_group)


class RMSprop(_TorchNamed):
    """``torch.optim.RMSprop`` on sgdlab's kernels."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        check_finite: bool = True,
        skip_nonfinite: bool = False,
        implementation: str = "auto",
        shard_group: Any = None,
    ) -> None:
        _unsupported(capturable=capturable, differentiable=differentiable)
        defaults = dict(
            lr=_float(lr), alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered
        )
        self._init(params, "rmsprop", defaults, check_finite, skip_nonfinite, None, maximize, implementation=implementation,
                   shard_group=shard_group)


class Adagrad(_TorchNamed):
    """``torch.optim.Adagrad`` on sgdlab's kernels."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: Optional[bool] = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        check_finite: bool = True,
        skip_nonfinite: bool = False,
        implementation: str = "auto",
        shard_group: Any = None,
    ) -> None:
        _unsupported(differentiable=differentiable)
        defaults = dict(
            lr=_float(lr),
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
        )
        self._init(params, "adagrad", defaults, check_finite, skip_nonfinite, None, maximize, implementation=implementation,
                   shard_group=shard_group)



def _sgdlab_globals(state_dtype: str, rounding: str, master_weights: bool, cautious: bool) -> dict[str, str]:
    out = {}
    if state_dtype != "param":
        out["state_dtype"] = _text(state_dtype, "state_dtype")
    if rounding != "stochastic":
        out["rounding"] = _text(rounding, "rounding")
    if master_weights:
        out["master_weights"] = "true"
    if cautious:
        out["cautious"] = "true"
    return out


_OWN_ARGS = """

    sgdlab's own keyword arguments (every class takes them; the Rust engine checks them):

    * ``check_finite`` (True): a NaN or infinite gradient raises :class:`SgdlabError` and
      changes nothing; False does not look (as ``torch.optim``; the fastest step, and on a GPU
      no host synchronisation).
    * ``skip_nonfinite`` (False): skip and count (``skipped``) such a step instead.
    * ``state_dtype`` (``"param"`` | ``"bf16"``; element-wise rules): keep the state in
      bfloat16, narrowed with ``rounding`` (``"stochastic"``, counter-based and the same on
      every device and thread count, or ``"nearest"``).
    * ``master_weights`` (False): a float32 master copy of bfloat16 parameters.
    * ``cautious`` (False; element-wise rules): cautious masking (Liang et al. 2024): update
      coordinates whose sign disagrees with the gradient are zeroed, the rest rescaled by
      n/(k + 1).
    * ``implementation`` (``"auto"`` | ``"rust"`` | ``"torch"``): the Rust kernels (CPU
      tensors) or the same rule in torch operations (any device, ``torch.compile``); ``auto``
      chooses by the parameters' device at the first step.
    * ``shard_group`` (None): the process group over which the parameters are partitioned
      when this optimizer steps one process's part of the model (``ZeroRedundancyOptimizer``:
      its process group); clipping's norm and the finiteness check sum over it. DTensor
      parameters (FSDP2) need none.
"""


class _Rule(_TorchNamed):
    """A class for one sgdlab rule with its reference package's signature."""

    def _setup(
        self,
        params: Iterable[Any],
        rule: str,
        defaults: dict[str, Any],
        *,
        maximize: bool = False,
        check_finite: bool = True,
        skip_nonfinite: bool = False,
        state_dtype: str = "param",
        rounding: str = "stochastic",
        master_weights: bool = False,
        cautious: bool = False,
        implementation: str = "auto",
        shard_group: Any = None,
    ) -> None:
        self._init(
            params,
            rule,
            defaults,
            check_finite,
            skip_nonfinite,
            None,
            maximize,
            spec_globals=_sgdlab_globals(state_dtype, rounding, master_weights, cautious),
            implementation=implementation,
            shard_group=shard_group,
        )


class Lion(_Rule):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), with the
    signature of ``lion-pytorch``/``pytorch_optimizer.Lion``: c = β₁m + (1 − β₁)g,
    p ← p − η(sign(c) + λp), m ← β₂m + (1 − β₂)g."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        **sgdlab_args: Any,
    ) -> None:
        self._setup(params, "lion", dict(lr=_float(lr), betas=betas, weight_decay=weight_decay), maximize=maximize, **sgdlab_args)


class NAdam(_Rule):
    """``torch.optim.NAdam`` (Adam with Nesterov momentum and the momentum schedule
    μₜ = β₁(1 − ½·0.96^(t ψ)))."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        **sgdlab_args: Any,
    ) -> None:
        _unsupported(capturable=capturable, differentiable=differentiable)
        defaults = dict(
            lr=_float(lr),
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        self._setup(params, "nadam", defaults, maximize=maximize, **sgdlab_args)


class RAdam(_Rule):
    """``torch.optim.RAdam`` (Adam whose adaptive step is rectified once ρₜ > 5)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        **sgdlab_args: Any,
    ) -> None:
        _unsupported(capturable=capturable, differentiable=differentiable)
        defaults = dict(
            lr=_float(lr), betas=betas, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay
        )
        self._setup(params, "radam", defaults, maximize=maximize, **sgdlab_args)


class Adamax(_Rule):
    """``torch.optim.Adamax`` (Adam with the infinity norm: u ← max(β₂u, |g| + ε))."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: Optional[bool] = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        **sgdlab_args: Any,
    ) -> None:
        _unsupported(capturable=capturable, differentiable=differentiable)
        defaults = dict(lr=_float(lr), betas=betas, eps=eps, weight_decay=weight_decay)
        self._setup(params, "adamax", defaults, maximize=maximize, **sgdlab_args)


class Muon(_Rule):
    """``torch.optim.Muon``: momentum orthogonalised by five quintic Newton–Schulz steps, for
    matrices (give the other tensors another rule with a group,
    ``{"params": ..., "rule": "adamw"}``). sgdlab iterates in the parameters' type
    (``ns_bf16=True``: in bfloat16, as ``torch.optim.Muon`` does)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: Optional[str] = None,
        *,
        ns_bf16: bool = False,
        **sgdlab_args: Any,
    ) -> None:
        if tuple(ns_coefficients) != (3.4445, -4.775, 2.0315):
            raise ValueError(
                f"ns_coefficients = {tuple(ns_coefficients)}: sgdlab's Muon iterates with "
                "(3.4445, -4.775, 2.0315) only"
            )
        defaults = dict(
            lr=_float(lr),
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr=adjust_lr_fn or "original",
            ns_bf16=ns_bf16,
        )
        self._setup(params, "muon", defaults, **sgdlab_args)


class AdEMAMix(_Rule):
    """AdEMAMix (Pagliardini et al. 2024): Adam's numerator plus α times a slow EMA (β₃),
    with optax's ``adamw``-style decay; ``t_alpha_beta3`` steps of warm-up of α and β₃
    (0: none)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha_beta3: int = 0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **sgdlab_args: Any,
    ) -> None:
        defaults = dict(
            lr=_float(lr), betas=betas, alpha=alpha, t_alpha_beta3=t_alpha_beta3, eps=eps, weight_decay=weight_decay
        )
        self._setup(params, "ademamix", defaults, **sgdlab_args)


class ScheduleFreeAdamW(_Rule):
    """The ``schedulefree`` package's ``AdamWScheduleFree``: call :meth:`eval` before
    evaluating or saving and :meth:`train` after."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: Optional[bool] = None,
        **sgdlab_args: Any,
    ) -> None:
        defaults = dict(
            lr=_float(lr),
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
        )
        self._setup(params, "sf-adamw", defaults, **sgdlab_args)


class ScheduleFreeSGD(_Rule):
    """The ``schedulefree`` package's ``SGDScheduleFree``: call :meth:`eval` before
    evaluating or saving and :meth:`train` after."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: Optional[bool] = None,
        **sgdlab_args: Any,
    ) -> None:
        defaults = dict(
            lr=_float(lr), momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
            weight_lr_power=weight_lr_power,
        )
        self._setup(params, "sf-sgd", defaults, **sgdlab_args)


class ADOPT(_Rule):
    """``pytorch_optimizer.ADOPT`` (Taniguchi et al. 2024): the gradient normalised by the
    second moment of the previous steps, then momentum; converges for any β₂. Its
    ``clip_lambda`` (a function of the step) is the exponent ``clip``: the normalised gradient
    is clipped to ±t^clip (None: no clip); ``weight_decouple`` is decoupled decay."""

    _translate = {"weight_decouple": "decoupled_weight_decay"}

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-3,
        betas: tuple[float, float] = (0.9, 0.9999),
        clip: Optional[float] = 0.25,
        weight_decay: float = 0.0,
        weight_decouple: bool = False,
        eps: float = 1e-6,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        **sgdlab_args: Any,
    ) -> None:
        defaults = dict(
            lr=_float(lr),
            betas=betas,
            clip="none" if clip is None else clip,
            weight_decay=weight_decay,
            weight_decouple=weight_decouple,
            eps=eps,
        )
        self._setup(params, "adopt", defaults, maximize=maximize, **sgdlab_args)


class Adan(_Rule):
    """``pytorch_optimizer.Adan`` (Xie et al. 2022): Nesterov-style momentum from gradient
    differences, three EMAs (β₁, β₂, β₃), decay p ← p/(1 + ηλ)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        **sgdlab_args: Any,
    ) -> None:
        defaults = dict(lr=_float(lr), betas=betas, weight_decay=weight_decay, eps=eps)
        self._setup(params, "adan", defaults, maximize=maximize, **sgdlab_args)


class Prodigy(_Rule):
    """``prodigyopt.Prodigy`` (Mishchenko & Defazio 2024): Adam whose step size d·lr estimates
    the distance to the solution (leave ``lr`` at 1). The estimate sums over every parameter,
    so parameter groups share ``betas``, ``beta3``, ``decouple``, ``use_bias_correction``,
    ``d0``, ``d_coef`` and ``growth_rate``, and each group's ``lr`` is the largest or 0 (as in
    the package). After each step every group shows the package's ``d``, ``d_max``,
    ``d_numerator`` and ``k``. ``slice_p`` other than 1 and sharded steps are not supported;
    ``fsdp_in_use`` is accepted and unused (the sums are exact on one process)."""

    _class_keys = frozenset({"fsdp_in_use", "slice_p", "d", "d_max", "d_numerator", "k"})

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: Optional[float] = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        slice_p: int = 1,
        **sgdlab_args: Any,
    ) -> None:
        if slice_p != 1:
            raise ValueError(
                f"slice_p = {slice_p}: sgdlab's Prodigy computes its estimate from every element "
                "(slice_p=1); the sliced approximation is not supported"
            )
        defaults = dict(
            lr=_float(lr),
            betas=betas,
            beta3=beta3,
            eps=eps,
            weight_decay=weight_decay,
            decouple=decouple,
            use_bias_correction=use_bias_correction,
            safeguard_warmup=safeguard_warmup,
            d0=d0,
            d_coef=d_coef,
            growth_rate=growth_rate,
        )
        self._setup(params, "prodigy", defaults, **sgdlab_args)
        for group in self.param_groups:
            group.update(d=d0, d_max=d0, d_numerator=0.0, k=0)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step; then every group's ``d``, ``d_max``, ``d_numerator`` and ``k``."""
        loss = super().step(closure)
        for p in (p for group in self.param_groups for p in group["params"]):
            st = self.state.get(p)
            if not st:
                continue
            # The Rust engine's view shows the scalars by name; the torch engine keeps them
            # in the entry's "scalars".
            src = st["scalars"] if isinstance(st.get("scalars"), dict) else st
            if float(src.get("d", 0.0)) > 0.0:
                kept = {k: float(src[k]) for k in ("d", "d_max", "d_numerator")}
                kept["k"] = int(float(src["k"]))
                for group in self.param_groups:
                    group.update(kept)
                break
        return loss


class SOAP(_Rule):
    """``pytorch_optimizer.SOAP`` (Vyas et al. 2024): Adam in the eigenbases of Shampoo's
    statistics L ≈ E[GGᵀ] and R ≈ E[GᵀG] of each matrix, refreshed by one power iteration
    every ``precondition_frequency`` steps; the first step only fills the statistics. Matrices
    and vectors (a vector is not rotated: Adam in SOAP's form); give higher-rank tensors another
    rule with a group. ``merge_dims``, ``precondition_1d``, ``normalize_gradient`` and
    ``correct_bias=False`` are not supported; the eigendecomposition and the QR decomposition
    run in float64 (the package's QR runs in float32)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: Optional[float] = None,
        weight_decay: float = 1e-2,
        precondition_frequency: int = 10,
        max_precondition_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        correct_bias: bool = True,
        normalize_gradient: bool = False,
        data_format: str = "channels_first",
        eps: float = 1e-8,
        *,
        maximize: bool = False,
        **sgdlab_args: Any,
    ) -> None:
        unsupported = {
            "merge_dims": merge_dims,
            "precondition_1d": precondition_1d,
            "correct_bias": not correct_bias,
            "normalize_gradient": normalize_gradient,
        }
        for key, on in unsupported.items():
            if on:
                raise ValueError(f"{key} = {not on if key == 'correct_bias' else on}: sgdlab's SOAP does not support it")
        defaults = dict(
            lr=_float(lr),
            betas=betas,
            shampoo_beta=shampoo_beta,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_precondition_dim=max_precondition_dim,
            eps=eps,
        )
        self._setup(params, "soap", defaults, maximize=maximize, **sgdlab_args)


class Madam(_Rule):
    """Madam (Bernstein et al. 2020, "Learning compositional functions via multiplicative
    weight updates"): p ← p·exp(−η sign(p) clip(g/√v̂, ±g_bound)), |p| ≤ p_scale·rms(p₀)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, torch.Tensor] = 0.01,
        p_scale: float = 3.0,
        g_bound: float = 10.0,
        **sgdlab_args: Any,
    ) -> None:
        self._setup(params, "madam", dict(lr=_float(lr), p_scale=p_scale, g_bound=g_bound), **sgdlab_args)


for _cls in (Lion, NAdam, RAdam, Adamax, Muon, AdEMAMix, ScheduleFreeAdamW, ScheduleFreeSGD, ADOPT, Adan, Prodigy, SOAP, Madam):
    _cls.__doc__ = (_cls.__doc__ or "") + _OWN_ARGS
del _cls
