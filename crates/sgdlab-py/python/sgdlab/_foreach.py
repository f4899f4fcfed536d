"""sgdlab's update rules in torch operations: the engine of :mod:`sgdlab.torch` for tensors
that the Rust kernels cannot step (any device other than the CPU, ``meta`` tensors) and for
``implementation="torch"``.

Every rule follows its Rust kernel (``crates/sgdlab-optim/src/<rule>.rs``) operation for
operation, on lists of tensors with ``torch._foreach_*`` operations, so that one step is a
few multi-tensor kernels in eager mode and ``torch.compile`` can fuse it. The global keys
are applied around the rules as the Rust step applies them (``step.rs``): the finiteness
check and the global norm, clipping, skipping, cautious masking, bfloat16 state with the
same counter-based stochastic-rounding bits (``lowp.rs``), and bfloat16 parameters with or
without a float32 master copy (``mixed.rs``).

The Rust kernels are the reference: the tests run this engine on CPU tensors against them on
every conformance file (``tests/test_foreach.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ._core import GLOBAL_DEFAULTS, SgdlabError

Tensor = torch.Tensor
Lists = list[list[Tensor]]

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
# The stream of the parameters' own stochastic rounding within a tensor's step (`mixed.rs`):
# the state's pairs of buffers use streams 0 and 1.
_PARAM_STREAM = 2
_MADAM_BETA = 0.999
_NS = (3.4445, -4.7750, 2.0315)


# -- the step's scalars --------------------------------------------------------------------


@dataclass
class Context:
    """One group's view of one step (the Rust ``StepContext``)."""

    #: This step's number, counting from 1.
    t: int
    #: The group's learning rate.
    lr: float
    #: The step's loss, if given.
    loss: Optional[float]
    #: ‖g‖² over all tensors after clipping (a 0-d float64 tensor), or None when no rule and
    #: no clipping needs it.
    norm_sq: Optional[Tensor]
    #: Elements over all tensors of the step.
    numel: int
    #: The step numbers as float32 tensors per (device, step) for torch's fused kernels,
    #: made once per step.
    step_tensors: dict[tuple[torch.device, int], Tensor] = field(default_factory=dict)
    #: The step's values of a rule with the global capability (Prodigy: d before the step,
    #: the step size η̂ = dηb, d after it, 1.0 if the parameters move), else empty.
    global_: tuple[float, ...] = ()

    def decay_lr(self) -> float:
        """The learning rate of the decoupled decay: η̂ (0 when the step does not move)
        for Prodigy, the group's η otherwise."""
        if self.global_:
            return self.global_[1] if self.global_[3] > 0.0 else 0.0
        return self.lr

    def step_tensor(self, device: torch.device) -> Tensor:
        """This step's number as a float32 tensor on `device`."""
        key = (device, self.t)
        t = self.step_tensors.get(key)
        if t is None:
            t = self.step_tensors[key] = torch.full((), float(self.t), dtype=torch.float32, device=device)
        return t

    def beta_pow(self, beta: float) -> float:
        """βᵗ, as the Rust step takes it (``powf`` of the step)."""
        return 0.0 if beta == 0.0 else beta**self.t


def _ema(beta: float, ctx: Context, debias: str) -> tuple[float, float, float]:
    """(decay, rate, factor) of an EMA with start-up correction (``sgd.rs``)."""
    if debias == "none":
        return beta, 1.0 - beta, 1.0
    if debias == "power":
        return beta, 1.0 - beta, 1.0 / (1.0 - ctx.beta_pow(beta))
    r = 1.0 / min(float(ctx.t), 1.0 / (1.0 - beta))
    return 1.0 - r, r, 1.0


# -- the rules -----------------------------------------------------------------------------
#
# A rule is `step(hp, ctx, params, grads, slots, scalars)`: `hp` the group's hyper-parameters
# (every key, as Python values), `params` and `grads` lists of tensors (the gradients already
# scaled by clipping and negated for `maximize`), `slots` the state buffers slot by slot
# (`slots[k][i]`: buffer k of tensor i), `scalars` one dict per tensor for the per-tensor
# scalars. It updates params, slots and scalars in place.


@dataclass(frozen=True)
class Rule:
    """A rule of the torch engine: its step, its state's layout and its decay form."""

    step: Callable[..., None]
    #: The state buffers' names for these hyper-parameters (the Rust rule's `slots()`).
    slots: Callable[[dict[str, Any]], tuple[str, ...]]
    #: (shrink s, coupled decay λ) of the update p′ = s p − c u (`DecayForm`), for cautious
    #: masking; None for rules that refuse it.
    decay_form: Optional[Callable[[dict[str, Any], float], tuple[float, float]]] = None
    #: Buffers that start at the parameters (Schedule-Free's z and x) rather than zero.
    starts_at_params: tuple[int, ...] = ()
    #: The initial value of the other buffers.
    initial: Callable[[dict[str, Any]], float] = lambda hp: 0.0
    #: Names of the per-tensor scalars.
    scalars: tuple[str, ...] = ()
    #: Whether the rule steps whole matrices (Muon).
    matrix: bool = False
    #: Schedule-Free: (evaluation slot, interpolation β key).
    averaging: Optional[tuple[int, str]] = None
    #: The shape of buffer k for a parameter of a shape (``UpdateRule::slot_shape``); None:
    #: every buffer has the parameter's shape.
    slot_shape: Optional[Callable[[dict[str, Any], int, tuple[int, ...]], tuple[int, ...]]] = None


def _coupled(hp: dict[str, Any], lr: float) -> tuple[float, float]:
    return 1.0, float(hp["weight_decay"])


def _decoupled(hp: dict[str, Any], lr: float) -> tuple[float, float]:
    return 1.0 - lr * hp["weight_decay"], 0.0


def _either(hp: dict[str, Any], lr: float) -> tuple[float, float]:
    return _decoupled(hp, lr) if hp["decoupled_weight_decay"] else _coupled(hp, lr)


def _with_l2(ps: list[Tensor], gs: list[Tensor], wd: float) -> list[Tensor]:
    """g + λp (new tensors), or the gradients themselves without decay."""
    return gs if wd == 0.0 else torch._foreach_add(gs, ps, alpha=wd)


def _sgd(hp, ctx, ps, gs, slots, scalars):
    lr, wd, mu = ctx.lr, hp["weight_decay"], hp["momentum"]
    d = _with_l2(ps, gs, wd)
    if mu == 0.0:
        torch._foreach_add_(ps, d, alpha=-lr)
        return
    (buf,) = slots
    if ctx.t == 1:
        torch._foreach_copy_(buf, d)
    else:
        torch._foreach_mul_(buf, mu)
        torch._foreach_add_(buf, d, alpha=1.0 - hp["dampening"])
    step = torch._foreach_add(d, buf, alpha=mu) if hp["nesterov"] else buf
    torch._foreach_add_(ps, step, alpha=-lr)


def _ema_momentum(hp, ctx, ps, gs, slots, scalars):
    decay, rate, factor = _ema(hp["beta"], ctx, hp["debias"])
    (m,) = slots
    torch._foreach_mul_(m, decay)
    torch._foreach_add_(m, gs, alpha=rate)
    torch._foreach_add_(ps, m, alpha=-ctx.lr * factor)


#: Whether Adam and AdamW step eagerly through torch's fused kernels
#: (``torch._fused_adam(w)_``, one kernel per step) where they compute the same rule:
#: PyTorch's bias correction on float32/float64 tensors of one CUDA or CPU device. False, or
#: under ``torch.compile`` (whose code generation fuses the operations itself): the
#: ``_foreach`` operations.
FUSED = True


def _fusable(ps: list[Tensor], gs: list[Tensor]) -> bool:
    device = ps[0].device
    return (
        FUSED
        and not torch.compiler.is_compiling()
        and device.type in ("cuda", "cpu")
        and all(p.device == device and p.dtype in (torch.float32, torch.float64) for p in ps)
        and all(g.dtype == p.dtype for g, p in zip(gs, ps))
    )


def _adam_with(decoupled: bool):
    def step(hp, ctx, ps, gs, slots, scalars):
        if hp["debias"] == "power" and _fusable(ps, gs) and all(b.dtype == ps[0].dtype for bufs in slots for b in bufs):
            t = ctx.step_tensor(ps[0].device)
            fused = torch._fused_adamw_ if decoupled else torch._fused_adam_
            fused(
                ps,
                gs,
                slots[0],
                slots[1],
                slots[2] if hp["amsgrad"] else [],
                [t] * len(ps),
                lr=ctx.lr,
                beta1=hp["beta1"],
                beta2=hp["beta2"],
                weight_decay=hp["weight_decay"],
                eps=hp["eps"],
                amsgrad=bool(hp["amsgrad"]),
                maximize=False,
            )
            return
        d1, r1, f1 = _ema(hp["beta1"], ctx, hp["debias"])
        d2, r2, f2 = _ema(hp["beta2"], ctx, hp["debias"])
        wd = hp["weight_decay"]
        if decoupled:
            if wd != 0.0:
                torch._foreach_mul_(ps, 1.0 - ctx.lr * wd)
        else:
            gs = _with_l2(ps, gs, wd)
        m, v = slots[0], slots[1]
        torch._foreach_mul_(m, d1)
        torch._foreach_add_(m, gs, alpha=r1)
        torch._foreach_mul_(v, d2)
        torch._foreach_addcmul_(v, gs, gs, value=r2)
        used = v
        if hp["amsgrad"]:
            torch._foreach_maximum_(slots[2], v)
            used = slots[2]
        den = torch._foreach_sqrt(used)
        torch._foreach_mul_(den, math.sqrt(f2))
        torch._foreach_add_(den, hp["eps"])
        torch._foreach_addcdiv_(ps, m, den, value=-ctx.lr * f1)

    return step


def _adam_slots(hp):
    return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hp["amsgrad"] else ("exp_avg", "exp_avg_sq")


def _rmsprop(hp, ctx, ps, gs, slots, scalars):
    alpha, eps = hp["alpha"], hp["eps"]
    momentum, centered = hp["momentum"] > 0.0, hp["centered"]
    g = _with_l2(ps, gs, hp["weight_decay"])
    v = slots[0]
    torch._foreach_mul_(v, alpha)
    torch._foreach_addcmul_(v, g, g, value=1.0 - alpha)
    if centered:
        gbar = slots[2] if momentum else slots[1]
        torch._foreach_mul_(gbar, alpha)
        torch._foreach_add_(gbar, g, alpha=1.0 - alpha)
        den = torch._foreach_addcmul(v, gbar, gbar, value=-1.0)
        torch._foreach_sqrt_(den)
    else:
        den = torch._foreach_sqrt(v)
    torch._foreach_add_(den, eps)
    if momentum:
        b = slots[1]
        torch._foreach_mul_(b, hp["momentum"])
        torch._foreach_addcdiv_(b, g, den)
        torch._foreach_add_(ps, b, alpha=-ctx.lr)
    else:
        torch._foreach_addcdiv_(ps, g, den, value=-ctx.lr)


def _rmsprop_slots(hp):
    names = ["square_avg"]
    if hp["momentum"] > 0.0:
        names.append("momentum_buffer")
    if hp["centered"]:
        names.append("grad_avg")
    return tuple(names)


def _adagrad(hp, ctx, ps, gs, slots, scalars):
    clr = ctx.lr / (1.0 + (ctx.t - 1) * hp["lr_decay"])
    g = _with_l2(ps, gs, hp["weight_decay"])
    (s,) = slots
    torch._foreach_addcmul_(s, g, g)
    den = torch._foreach_sqrt(s)
    torch._foreach_add_(den, hp["eps"])
    torch._foreach_addcdiv_(ps, g, den, value=-clr)


def _lion(hp, ctx, ps, gs, slots, scalars):
    b1, b2, wd = hp["beta1"], hp["beta2"], hp["weight_decay"]
    (m,) = slots
    c = torch._foreach_mul(m, b1)
    torch._foreach_add_(c, gs, alpha=1.0 - b1)
    update = torch._foreach_sign(c)
    if wd != 0.0:
        torch._foreach_add_(update, ps, alpha=wd)
    torch._foreach_add_(ps, update, alpha=-ctx.lr)
    torch._foreach_mul_(m, b2)
    torch._foreach_add_(m, gs, alpha=1.0 - b2)


def _madam(hp, ctx, ps, gs, slots, scalars):
    (v,) = slots
    bc = 1.0 - ctx.beta_pow(_MADAM_BETA)
    g_bound = hp["g_bound"]
    if ctx.t == 1:
        for p, sc in zip(ps, scalars):
            mean_sq = p.double().square().sum() / max(p.numel(), 1)
            sc["max"] = hp["p_scale"] * _number(mean_sq.sqrt())
    torch._foreach_mul_(v, _MADAM_BETA)
    torch._foreach_addcmul_(v, gs, gs, value=1.0 - _MADAM_BETA)
    for p, g, vi, sc in zip(ps, gs, v, scalars):
        normed = g / (vi / bc).sqrt()
        normed = torch.nan_to_num(normed, nan=0.0, posinf=math.inf, neginf=-math.inf)
        normed = normed.clamp(-g_bound, g_bound)
        # The factor in float64, then rounded to the parameters' type (as the kernel does).
        factor = torch.exp((normed * torch.sign(p)).double() * -ctx.lr).to(p.dtype)
        bound = sc["max"]
        p.copy_((p * factor).clamp(-bound, bound))


def _normsgd(hp, ctx, ps, gs, slots, scalars):
    assert ctx.norm_sq is not None
    factor = ctx.lr / torch.sqrt(ctx.norm_sq / max(ctx.numel, 1) + hp["eps"])
    by_device: dict[tuple[torch.device, torch.dtype], Tensor] = {}
    for p, g in zip(ps, gs):
        key = (p.device, p.dtype)
        if key not in by_device:
            by_device[key] = factor.to(device=p.device, dtype=p.dtype)
        p.sub_(g * by_device[key])


def _multiplicative(hp, ctx, ps, gs, slots, scalars):
    scale = torch._foreach_abs(ps)
    torch._foreach_clamp_min_(scale, hp["eps"])
    torch._foreach_mul_(scale, gs)
    torch._foreach_add_(ps, scale, alpha=-ctx.lr)


def _lossprop(hp, ctx, ps, gs, slots, scalars):
    loss = math.nan if ctx.loss is None else ctx.loss
    torch._foreach_add_(ps, gs, alpha=-ctx.lr * loss)


def _adamax(hp, ctx, ps, gs, slots, scalars):
    clr = ctx.lr / (1.0 - ctx.beta_pow(hp["beta1"]))
    g = _with_l2(ps, gs, hp["weight_decay"])
    m, u = slots
    torch._foreach_lerp_(m, g, 1.0 - hp["beta1"])
    torch._foreach_mul_(u, hp["beta2"])
    a = torch._foreach_abs(g)
    torch._foreach_add_(a, hp["eps"])
    torch._foreach_maximum_(u, a)
    torch._foreach_addcdiv_(ps, m, u, value=-clr)


def _shrink_and_l2(hp, ctx, ps, gs):
    """Decoupled decay applied to the parameters, or L2 added to the gradient (NAdam, RAdam)."""
    wd = hp["weight_decay"]
    if hp["decoupled_weight_decay"]:
        if wd != 0.0:
            torch._foreach_mul_(ps, 1.0 - ctx.lr * wd)
        return gs
    return _with_l2(ps, gs, wd)


def _nadam_mu(hp, t: int) -> float:
    return hp["beta1"] * (1.0 - 0.5 * 0.96 ** (t * hp["momentum_decay"]))


def _nadam(hp, ctx, ps, gs, slots, scalars):
    mu, mu_next = _nadam_mu(hp, ctx.t), _nadam_mu(hp, ctx.t + 1)
    for sc in scalars:
        sc["mu_product"] = (1.0 if ctx.t == 1 else sc["mu_product"]) * mu
    g = _shrink_and_l2(hp, ctx, ps, gs)
    m, v = slots
    b2 = hp["beta2"]
    torch._foreach_lerp_(m, g, 1.0 - hp["beta1"])
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
    den = torch._foreach_div(v, 1.0 - ctx.beta_pow(b2))
    torch._foreach_sqrt_(den)
    torch._foreach_add_(den, hp["eps"])
    c_grad = [-ctx.lr * (1.0 - mu) / (1.0 - sc["mu_product"]) for sc in scalars]
    c_avg = [-ctx.lr * mu_next / (1.0 - sc["mu_product"] * mu_next) for sc in scalars]
    torch._foreach_addcdiv_(ps, g, den, c_grad)
    torch._foreach_addcdiv_(ps, m, den, c_avg)


def _radam(hp, ctx, ps, gs, slots, scalars):
    b1, b2 = hp["beta1"], hp["beta2"]
    bc1, bc2 = 1.0 - ctx.beta_pow(b1), 1.0 - ctx.beta_pow(b2)
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * ctx.t * ctx.beta_pow(b2) / bc2
    g = _shrink_and_l2(hp, ctx, ps, gs)
    m, v = slots
    torch._foreach_lerp_(m, g, 1.0 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
    if rho_t > 5.0:
        r = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        den = torch._foreach_sqrt(v)
        torch._foreach_add_(den, hp["eps"])
        torch._foreach_addcdiv_(ps, m, den, value=-ctx.lr * r * math.sqrt(bc2) / bc1)
    else:
        torch._foreach_add_(ps, m, alpha=-ctx.lr / bc1)


def _ademamix_scheduled(hp, t: int) -> tuple[float, float]:
    alpha, beta3, horizon = hp["alpha"], hp["beta3"], hp["t_alpha_beta3"]
    if t >= horizon:
        return alpha, beta3
    a = t / horizon

    def f(beta: float) -> float:
        return math.log(0.5) / math.log(beta + 1e-8) - 1.0

    h = (1.0 - a) * f(hp["beta1"]) + a * f(beta3)
    return a * alpha, 0.5 ** (1.0 / (h + 1.0))


def _ademamix(hp, ctx, ps, gs, slots, scalars):
    alpha, beta3 = _ademamix_scheduled(hp, ctx.t)
    b1, b2 = hp["beta1"], hp["beta2"]
    m1, m2, nu = slots
    torch._foreach_mul_(m1, b1)
    torch._foreach_add_(m1, gs, alpha=1.0 - b1)
    torch._foreach_mul_(m2, beta3)
    torch._foreach_add_(m2, gs, alpha=1.0 - beta3)
    torch._foreach_mul_(nu, b2)
    torch._foreach_addcmul_(nu, gs, gs, value=1.0 - b2)
    num = torch._foreach_div(m1, 1.0 - ctx.beta_pow(b1))
    torch._foreach_add_(num, m2, alpha=alpha)
    den = torch._foreach_div(nu, 1.0 - ctx.beta_pow(b2))
    torch._foreach_sqrt_(den)
    torch._foreach_add_(den, hp["eps"])
    update = torch._foreach_div(num, den)
    if hp["weight_decay"] != 0.0:
        torch._foreach_add_(update, ps, alpha=hp["weight_decay"])
    torch._foreach_add_(ps, update, alpha=-ctx.lr)


def _adopt(hp, ctx, ps, gs, slots, scalars):
    g = _shrink_and_l2(hp, ctx, ps, gs)
    m, v = slots
    b2 = hp["beta2"]
    if ctx.t == 1:
        torch._foreach_addcmul_(v, g, g)
        return
    den = torch._foreach_sqrt(v)
    torch._foreach_clamp_min_(den, hp["eps"])
    n = torch._foreach_div(g, den)
    if hp["clip"] != "none":
        bound = float(ctx.t) ** hp["clip"]
        torch._foreach_clamp_min_(n, -bound)
        torch._foreach_clamp_max_(n, bound)
    torch._foreach_lerp_(m, n, 1.0 - hp["beta1"])
    torch._foreach_add_(ps, m, alpha=-ctx.lr)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - b2)


def _adan(hp, ctx, ps, gs, slots, scalars):
    b1, b2, b3 = hp["beta1"], hp["beta2"], hp["beta3"]
    bc1, bc2, bc3 = (1.0 - ctx.beta_pow(b) for b in (b1, b2, b3))
    m, v, n, d = slots
    # d holds −g_{t−1}: the difference gₜ − gₜ₋₁ (0 at the first step).
    diff = [torch.zeros_like(g) for g in gs] if ctx.t == 1 else torch._foreach_add(d, gs)
    torch._foreach_lerp_(m, gs, 1.0 - b1)
    torch._foreach_lerp_(n, diff, 1.0 - b2)
    u = torch._foreach_add(gs, diff, alpha=b2)
    torch._foreach_mul_(v, b3)
    torch._foreach_addcmul_(v, u, u, value=1.0 - b3)
    den = torch._foreach_sqrt(v)
    torch._foreach_div_(den, math.sqrt(bc3))
    torch._foreach_add_(den, hp["eps"])
    torch._foreach_addcdiv_(ps, m, den, value=-ctx.lr / bc1)
    torch._foreach_addcdiv_(ps, n, den, value=-ctx.lr * b2 / bc2)
    torch._foreach_div_(ps, 1.0 + ctx.lr * hp["weight_decay"])
    torch._foreach_copy_(d, gs)
    torch._foreach_neg_(d)


# -- Prodigy (``prodigy.rs``) ----------------------------------------------------------------

_PRODIGY_SHARED = ("beta1", "beta2", "beta3", "decouple", "use_bias_correction", "d0", "d_coef", "growth_rate")


def _prodigy_beta3(hp) -> float:
    b3 = hp["beta3"]
    return math.sqrt(hp["beta2"]) if b3 in (None, "none") else float(b3)


def _prodigy_kept(hp, sc: dict) -> tuple[float, float, float, float]:
    """d, d_max, r and k of a tensor's scalars (d = d₀ before the first step)."""
    if sc.get("d", 0.0) > 0.0:
        return sc["d"], sc["d_max"], sc["d_numerator"], sc["k"]
    return hp["d0"], hp["d0"], 0.0, 0.0


def _prodigy_dlr(hp, d: float, lr: float, k: float) -> float:
    b = 1.0
    if hp["use_bias_correction"]:
        b = math.sqrt(1.0 - hp["beta2"] ** (k + 1.0)) / (1.0 - hp["beta1"] ** (k + 1.0))
    return d * lr * b


def _prodigy_s_coef(hp, d: float, dlr: float) -> float:
    return (d / hp["d0"]) * (d if hp["safeguard_warmup"] else dlr)


def prodigy_settle(works: list["Work"], grads: list[list[Tensor]], points: list[list[Tensor]]) -> tuple[float, ...]:
    """Prodigy's global pass (``global.rs``): refuses what its groups cannot share, sums
    Σ g′·(x₀ − x) and Σ|β₃s + c g′| over every tensor in float64, settles d and writes the
    kept scalars into every tensor's; returns the step's values (``Context.global_``)."""
    own = works[0].hp
    lr_max = max(float(w.hp["lr"]) for w in works)
    for gi, w in enumerate(works):
        if w.rule != "prodigy":
            raise SgdlabError(
                f"parameter group {gi} steps with {w.rule} beside prodigy: its estimate is shared "
                "by every parameter, so every group must use it"
            )
        for key in _PRODIGY_SHARED:
            if w.hp[key] != own[key]:
                raise SgdlabError(
                    f"invalid {key} of parameter group {gi} = {w.hp[key]}: must equal the "
                    f"other groups' ({own[key]}): prodigy's estimate is shared by every group"
                )
        lr = float(w.hp["lr"])
        if lr not in (lr_max, 0.0):
            raise SgdlabError(
                f"invalid lr of parameter group {gi} = {lr}: must be the largest group's "
                f"({lr_max}) or 0: prodigy scales one estimated step for every group"
            )
    # The latest scalars: a parameter that had no gradient for a while keeps older ones (every
    # step that changes them counts k up).
    newest = max((st.get("scalars", {}) for w in works for st in w.states), key=lambda sc: sc.get("k", -1.0))
    d, d_max, r, k = _prodigy_kept(own, newest)
    dlr = _prodigy_dlr(own, d, lr_max, k)
    num = den = 0.0
    for w, gs, ps in zip(works, grads, points):
        if float(w.hp["lr"]) <= 0.0:
            continue
        c = _prodigy_s_coef(w.hp, d, dlr)
        b3 = _prodigy_beta3(w.hp)
        for p, g, st in zip(ps, gs, w.states):
            if not w.hp["decouple"] and w.hp["weight_decay"] != 0.0:
                g = g + p * w.hp["weight_decay"]
            s = st.get("s")
            s_new = g * c if s is None else s.to(p.dtype) * b3 + g * c
            p0 = st.get("p0")
            diff = torch.zeros_like(p) if p0 is None else p0.to(p.dtype) - p
            num += _number((g.double() * diff.double()).sum())
            den += _number(s_new.abs().double().sum())
    if den == 0.0:
        values: tuple[float, ...] = (d, dlr, d, 0.0)
        kept = (d, d_max, r, k)
    else:
        r = _prodigy_beta3(own) * r + (d / own["d0"]) * dlr * num
        d_hat = own["d_coef"] * r / den
        grown = max(d, d_hat) if d == own["d0"] else d
        d_max = max(d_max, d_hat)
        d_after = min(d_max, grown * own["growth_rate"])
        values = (d, dlr, d_after, 1.0)
        kept = (d_after, d_max, r, k + 1.0)
    for w in works:
        for st in w.states:
            st.setdefault("scalars", {}).update(zip(("d", "d_max", "d_numerator", "k"), kept))
    return values


def _prodigy(hp, ctx, ps, gs, slots, scalars):
    m, v, s, _p0 = slots
    d, dlr, d_after, advance = ctx.global_
    b1, b2, b3 = hp["beta1"], hp["beta2"], _prodigy_beta3(hp)
    wd = hp["weight_decay"]
    if not hp["decouple"] and wd != 0.0:
        gs = torch._foreach_add(gs, ps, alpha=wd)
    if ctx.lr > 0.0:
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, gs, alpha=d * (1.0 - b1))
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, gs, gs, value=d * d * (1.0 - b2))
        torch._foreach_mul_(s, b3)
        torch._foreach_add_(s, gs, alpha=_prodigy_s_coef(hp, d, dlr))
    if advance > 0.0:
        den = torch._foreach_sqrt(v)
        torch._foreach_add_(den, d_after * hp["eps"])
        if hp["decouple"] and wd != 0.0:
            torch._foreach_add_(ps, ps, alpha=-wd * dlr)
        if b1 > 0.0:
            torch._foreach_addcdiv_(ps, m, den, value=-dlr)
        else:
            torch._foreach_addcdiv_(ps, gs, den, value=-dlr * d_after)


def _prodigy_form(hp, lr):
    # `lr` is the decoupled decay's (Context.decay_lr): η̂, or 0 when the step does not move.
    return (1.0 - hp["weight_decay"] * lr, 0.0) if hp["decouple"] else (1.0, float(hp["weight_decay"]))


# -- SOAP (``soap.rs``) ----------------------------------------------------------------------


def _soap_rotates(hp, shape: tuple[int, ...], axis: int) -> bool:
    return len(shape) == 2 and shape[axis] <= hp["max_precondition_dim"]


def _soap_slot_shape(hp, k: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    if k < 2:
        return tuple(shape)
    axis = k % 2
    return (shape[axis], shape[axis]) if _soap_rotates(hp, shape, axis) else (0,)


def _soap_eigenbasis(a: Tensor) -> Tensor:
    """The eigenvectors of the symmetric ``a`` (+10⁻³⁰I) by decreasing eigenvalue, in
    float64, as columns."""
    a64 = a.double() + 1e-30 * torch.eye(a.shape[0], dtype=torch.float64, device=a.device)
    values, vectors = torch.linalg.eigh(a64)
    order = torch.argsort(values, descending=True, stable=True)
    return vectors[:, order].to(a.dtype)


def _soap(hp, ctx, ps, gs, slots, scalars):
    b1, b2 = hp["beta1"], hp["beta2"]
    sb = hp["shampoo_beta"]
    ws = 1.0 - (b2 if sb in (None, "none") else float(sb))
    for i, (p, g) in enumerate(zip(ps, gs)):
        m, v, l, r, ql, qr = (s[i] for s in slots)
        rows, cols = (p.shape[0], p.shape[1]) if p.dim() == 2 else (1, p.numel())
        G = g.reshape(rows, cols)
        rot0, rot1 = l.numel() > 0, r.numel() > 0

        def forward(x):
            if rot0:
                x = ql.T @ x
            if rot1:
                x = x @ qr
            return x

        def backward(x):
            if rot0:
                x = ql @ x
            if rot1:
                x = x @ qr.T
            return x

        def statistics():
            if rot0:
                l.lerp_(G @ G.T, ws)
            if rot1:
                r.lerp_(G.T @ G, ws)

        if ctx.t == 1:
            statistics()
            if rot0:
                ql.copy_(_soap_eigenbasis(l))
            if rot1:
                qr.copy_(_soap_eigenbasis(r))
            continue
        k = ctx.t - 1
        step = ctx.lr * math.sqrt(1.0 - b2**k) / (1.0 - b1**k)
        projected = forward(G)
        m.lerp_(g, 1.0 - b1)
        v.lerp_((projected * projected).reshape(p.shape), 1.0 - b2)
        normed = forward(m.reshape(rows, cols)) / (v.reshape(rows, cols).sqrt() + hp["eps"])
        p.add_(backward(normed).reshape(p.shape), alpha=-step)
        p.mul_(1.0 - hp["weight_decay"] * ctx.lr)
        statistics()
        if k % hp["precondition_frequency"] == 0:
            v2 = v.view(rows, cols)
            for axis, (a, q) in enumerate(((l, ql), (r, qr))):
                if a.numel() == 0:
                    continue
                product = a @ q
                estimate = (q * product).sum(dim=0)
                order = torch.argsort(estimate, descending=True, stable=True)
                v2.copy_(v2.index_select(axis, order))
                q.copy_(torch.linalg.qr(product[:, order].double()).Q.to(q.dtype))


def _adan_form(hp, lr):
    return 1.0 / (1.0 + lr * hp["weight_decay"]), 0.0


def _round_bf16(x: Tensor) -> Tensor:
    """x rounded to bfloat16 and back (via float32 for float64, as the kernel does)."""
    if x.dtype == torch.float64:
        return x.float().bfloat16().double()
    return x.bfloat16().to(x.dtype)


def newton_schulz(update: Tensor, steps: int, eps: float, bf16: bool) -> Tensor:
    """Muon's quintic Newton–Schulz iteration toward the orthogonal factor of ``update``
    (``muon.rs``): X ← aX + (bA + cA²)X with A = XXᵀ, on the wider orientation's transpose,
    after X ← X/max(‖X‖_F, ε); every intermediate rounded to bfloat16 with ``bf16``.

    On the CPU the bfloat16 roundings are applied to products computed in the update's type,
    as the Rust kernel does; on other devices ``bf16`` runs the products in bfloat16 with
    float32 accumulation (as ``torch.optim.Muon``): the same roundings of the same values,
    accumulated in another order."""
    tall = update.shape[0] > update.shape[1]
    if bf16 and update.device.type != "cpu":
        x = _round_bf16(update.T if tall else update).bfloat16()
        norm = torch.linalg.vector_norm(x, dtype=torch.float32).clamp_min(eps).bfloat16()
        x = x / norm
        a, b, c = _NS
        for _ in range(steps):
            gram = x @ x.T
            gram2 = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, gram2, x, beta=a)
        x = x.to(update.dtype)
        return x.T if tall else x
    rnd = _round_bf16 if bf16 else (lambda x: x)
    x = rnd(update.T if tall else update)
    norm = torch.linalg.vector_norm(x, dtype=torch.float64).clamp_min(eps).to(x.dtype)
    if bf16:
        norm = _round_bf16(norm)
    x = rnd(x / norm)
    a, b, c = _NS
    for _ in range(steps):
        gram = rnd(x @ x.T)
        gram2 = rnd(b * gram + c * (gram @ gram))
        x = rnd(a * x + gram2 @ x)
    return x.T if tall else x


def _muon(hp, ctx, ps, gs, slots, scalars):
    (buf,) = slots
    mom = hp["momentum"]
    torch._foreach_lerp_(buf, gs, 1.0 - mom)
    updates = torch._foreach_lerp(gs, buf, mom) if hp["nesterov"] else buf
    for p, u in zip(ps, updates):
        rows, cols = p.shape
        scale = {
            "original": math.sqrt(max(rows / cols, 1.0)),
            "match_rms_adamw": 0.2 * math.sqrt(max(rows, cols)),
            "spectral_unclamped": math.sqrt(rows / cols),
        }[hp["adjust_lr"]]
        ortho = newton_schulz(u, int(hp["ns_steps"]), hp["eps"], bool(hp["ns_bf16"]))
        p.mul_(1.0 - ctx.lr * hp["weight_decay"])
        p.add_(ortho, alpha=-ctx.lr * scale)


def _sf_begin(hp, ctx: Context, scalars: list[dict[str, float]]) -> float:
    """Schedule-Free's averaging weights (`schedulefree.rs`); returns the warmed-up lr."""
    k = ctx.t - 1
    warmup = float(hp["warmup_steps"])
    lr = ctx.lr * ((k + 1.0) / warmup if k < warmup else 1.0)
    for sc in scalars:
        if ctx.t == 1:
            sc["lr_max"], sc["weight_sum"] = -1.0, 0.0
        sc["lr_max"] = max(sc["lr_max"], lr)
        weight = float(ctx.t) ** hp["r"] * sc["lr_max"] ** hp["weight_lr_power"]
        sc["weight_sum"] += weight
        sc["ckp1"] = 0.0 if sc["weight_sum"] == 0.0 else weight / sc["weight_sum"]
    return lr


def _sf_sgd(hp, ctx, ps, gs, slots, scalars):
    lr = _sf_begin(hp, ctx, scalars)
    z, x = slots
    g = _with_l2(ps, gs, hp["weight_decay"])
    torch._foreach_add_(z, g, alpha=-lr)
    _sf_average(hp["momentum"], ps, z, x, scalars)


def _sf_adamw(hp, ctx, ps, gs, slots, scalars):
    lr = _sf_begin(hp, ctx, scalars)
    z, x, v = slots
    b2 = hp["beta2"]
    if hp["weight_decay"] != 0.0:
        torch._foreach_add_(z, ps, alpha=-lr * hp["weight_decay"])
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, gs, gs, value=1.0 - b2)
    den = torch._foreach_div(v, 1.0 - ctx.beta_pow(b2))
    torch._foreach_sqrt_(den)
    torch._foreach_add_(den, hp["eps"])
    torch._foreach_addcdiv_(z, gs, den, value=-lr)
    _sf_average(hp["beta1"], ps, z, x, scalars)


def _sf_average(beta: float, ps, z, x, scalars):
    """x ← (1 − c)x + cz, then the training point p ← βx + (1 − β)z."""
    for xi, zi, sc in zip(x, z, scalars):
        xi.mul_(1.0 - sc["ckp1"]).add_(zi, alpha=sc["ckp1"])
    interpolate(ps, z, x, beta)


def interpolate(ps: list[Tensor], z: list[Tensor], x: list[Tensor], beta: float) -> None:
    """p ← βx + (1 − β)z (Schedule-Free's training point)."""
    torch._foreach_copy_(ps, x)
    torch._foreach_mul_(ps, beta)
    torch._foreach_add_(ps, z, alpha=1.0 - beta)


RULES: dict[str, Rule] = {
    "sgd": Rule(_sgd, lambda hp: () if hp["momentum"] == 0.0 else ("momentum_buffer",), _coupled),
    "ema-momentum": Rule(_ema_momentum, lambda hp: ("exp_avg",), lambda hp, lr: (1.0, 0.0)),
    "adam": Rule(_adam_with(False), _adam_slots, _coupled),
    "adamw": Rule(_adam_with(True), _adam_slots, _decoupled),
    "rmsprop": Rule(_rmsprop, _rmsprop_slots, _coupled),
    "adagrad": Rule(_adagrad, lambda hp: ("sum",), _coupled, initial=lambda hp: hp["initial_accumulator_value"]),
    "lion": Rule(_lion, lambda hp: ("exp_avg",), _decoupled),
    "madam": Rule(_madam, lambda hp: ("exp_avg_sq",), lambda hp, lr: (1.0, 0.0), scalars=("max",)),
    "normsgd": Rule(_normsgd, lambda hp: (), lambda hp, lr: (1.0, 0.0)),
    "multiplicative": Rule(_multiplicative, lambda hp: (), lambda hp, lr: (1.0, 0.0)),
    "lossprop": Rule(_lossprop, lambda hp: (), lambda hp, lr: (1.0, 0.0)),
    "adamax": Rule(_adamax, lambda hp: ("exp_avg", "exp_inf"), _coupled),
    "nadam": Rule(_nadam, lambda hp: ("exp_avg", "exp_avg_sq"), _either, scalars=("mu_product",)),
    "radam": Rule(_radam, lambda hp: ("exp_avg", "exp_avg_sq"), _either),
    "ademamix": Rule(_ademamix, lambda hp: ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq"), _decoupled),
    "muon": Rule(_muon, lambda hp: ("momentum_buffer",), matrix=True),
    "sf-sgd": Rule(
        _sf_sgd,
        lambda hp: ("z", "x"),
        starts_at_params=(0, 1),
        scalars=("lr_max", "weight_sum", "ckp1"),
        averaging=(1, "momentum"),
    ),
    "sf-adamw": Rule(
        _sf_adamw,
        lambda hp: ("z", "x", "exp_avg_sq"),
        starts_at_params=(0, 1),
        scalars=("lr_max", "weight_sum", "ckp1"),
        averaging=(1, "beta1"),
    ),
    "adopt": Rule(_adopt, lambda hp: ("exp_avg", "exp_avg_sq"), _either),
    "adan": Rule(_adan, lambda hp: ("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"), _adan_form),
    "soap": Rule(
        _soap,
        lambda hp: ("exp_avg", "exp_avg_sq", "GG_0", "GG_1", "Q_0", "Q_1"),
        matrix=True,
        slot_shape=_soap_slot_shape,
    ),
    "prodigy": Rule(
        _prodigy,
        lambda hp: ("exp_avg", "exp_avg_sq", "s", "p0"),
        _prodigy_form,
        starts_at_params=(3,),
        scalars=("d", "d_max", "d_numerator", "k"),
    ),
}


# -- stochastic rounding: the Rust kernels' counter-based bits -----------------------------


def _splitmix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def stream_key(seed: int, step: int, tensor: int, stream: int) -> int:
    """The key of one stream of stochastic rounding (``lowp::stream_key``)."""
    h = _splitmix(seed & _M64)
    for v in (step, tensor, stream):
        h = _splitmix(h ^ (v & _M64))
    return h


def _mul32(x: Tensor, c: int) -> Tensor:
    """x·c mod 2³² for int64 tensors of values below 2³² (no product exceeds 2⁴⁸)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def counter_bits(key: int, n: int, device: torch.device) -> Tensor:
    """The 32 random bits of elements 0..n of stream ``key`` (``lowp::counter_bits``), as an
    int64 tensor: a counter-based hash (``lowbias32``) of each element's index."""
    i = torch.arange(n, dtype=torch.int64, device=device)
    hi = i >> 32
    xor = ((hi * 0x9E3779B9) & _M32) ^ (key & _M32)
    x = (((i & _M32) ^ xor) + (key >> 32)) & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _f32_odd(x: Tensor) -> Tensor:
    """float64 narrowed to float32 with round-to-odd (``lowp::f64_to_f32_odd``), so that
    rounding it to bfloat16 rounds the float64 value correctly."""
    f = x.float()
    back = f.double()
    bits = f.view(torch.int32)
    toward_zero = torch.where(back.abs() > x.abs(), bits - 1, bits)
    inexact = torch.isfinite(f) & (back != x)
    odd = torch.where(inexact, toward_zero | 1, bits)
    return odd.view(torch.float32)


def _to_f32(x: Tensor) -> Tensor:
    return _f32_odd(x) if x.dtype == torch.float64 else x.float()


def narrow_bf16(x: Tensor, out: Tensor, rounding: str, key: Optional[int], half: int = 0) -> None:
    """``out`` (bfloat16) ← ``x`` rounded to nearest, or stochastically with the low
    (``half`` 0) or high (1) 16 bits of stream ``key``'s counter bits (``lowp::bf16_stochastic``:
    up when the dropped bits plus the random bits carry; NaN stays a quiet NaN)."""
    x32 = _to_f32(x)
    if rounding == "nearest" or x.device.type == "meta":
        out.copy_(x32)
        return
    assert key is not None
    r = (counter_bits(key, x.numel(), x.device) >> (16 * half)) & 0xFFFF
    bits = x32.reshape(-1).view(torch.int32).to(torch.int64) & _M32
    rounded = (bits + r) & _M32
    rounded = torch.where(torch.isnan(x32.reshape(-1)), bits | 0x00400000, rounded)
    top = rounded >> 16
    top = torch.where(top >= 0x8000, top - 0x10000, top).to(torch.int16)
    out.copy_(top.view(torch.bfloat16).view(out.shape))


# -- the engine ----------------------------------------------------------------------------


@dataclass
class Work:
    """One parameter group's part of a step."""

    rule: str
    hp: dict[str, Any]
    cautious: bool
    params: list[Tensor]
    grads: list[Tensor]
    #: Each tensor's (group, index), named "group.index" in messages.
    names: list[tuple[int, int]]
    #: The optimizer's ``state[p]`` dict of each parameter.
    states: list[dict[str, Any]]
    #: Each tensor's position among the step's tensors (the stochastic-rounding streams).
    index: list[int]


@dataclass
class Engine:
    """The torch engine's own state: step counts and the evaluation mode, and the global keys."""

    globals_: dict[str, str]
    steps: int = 0
    skipped: int = 0
    in_eval_mode: bool = False
    _keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = dict(GLOBAL_DEFAULTS)
        keys.update(self.globals_)
        self._keys = keys

    @property
    def clip_norm(self) -> Optional[float]:
        v = self._keys["clip_norm"]
        return None if v == "none" else float(v)

    def flag(self, key: str) -> bool:
        return self._keys[key] == "true"

    @property
    def state_dtype(self) -> str:
        return self._keys["state_dtype"]

    @property
    def rounding(self) -> str:
        return self._keys["rounding"]

    @property
    def sr_seed(self) -> int:
        return int(self._keys["sr_seed"])

    # -- the step -------------------------------------------------------------------------

    def step(self, works: list[Work], loss: Optional[float], parts: Optional[Any] = None) -> bool:
        """One step over every group's tensors; False when skipped (``skip_nonfinite``).
        Raises :class:`SgdlabError`, changing nothing, where the Rust step would. ``parts``
        (a ``_dist.Parts``): the tensors are one process's part of the model, and the norm,
        size and finiteness are summed over the processes."""
        if self.in_eval_mode:
            raise SgdlabError(
                "a step in eval mode (the parameters hold the evaluation point): call train() first"
            )
        if any(w.rule == "lossprop" for w in works) and loss is None:
            raise SgdlabError(
                "lossprop needs the step's loss: pass a closure to step() that returns it"
            )
        tensors = [p for w in works for p in w.params]
        grads = [g for w in works for g in w.grads]
        names = [n for w in works for n in w.names]
        dtypes = {p.dtype for p in tensors}
        bf16 = torch.bfloat16 in dtypes
        if bf16 and len(dtypes) > 1:
            raise TypeError(
                "the parameters mix bfloat16 with float32/float64: one optimizer steps one "
                "parameter dtype (use one optimizer per dtype)"
            )
        self._check_layout(works, bf16)
        devices = {p.device for p in tensors}
        meta = any(d.type == "meta" for d in devices)
        check = self.flag("check_finite")
        need_norm = self.clip_norm is not None or any(w.rule in ("normsgd", "muon") for w in works)
        nonfinite: Optional[str] = None
        if loss is not None and check and not math.isfinite(loss):
            nonfinite = f"non-finite value {loss} in loss at index 0"
        compute = [_compute_grad(g, bf16) for g in grads]
        norm_sq: Optional[Tensor] = None
        numel = sum(p.numel() for p in tensors)
        if not meta and nonfinite is None and (check or need_norm):
            if parts is None:
                nonfinite, norm_sq = _prepass(compute, names, need_norm)
            else:
                nonfinite, norm_sq, numel = _prepass_parts(compute, names, need_norm, parts)
        elif meta and need_norm:
            norm_sq = torch.zeros((), dtype=torch.float64, device="meta")
        if nonfinite is not None:
            if self.flag("skip_nonfinite"):
                self.skipped += 1
                return False
            raise SgdlabError(nonfinite)
        clip = None
        if self.clip_norm is not None:
            assert norm_sq is not None
            clip = torch.clamp(self.clip_norm / (norm_sq.sqrt() + 1e-6), max=1.0)
            norm_sq = norm_sq * clip * clip
        per_work: list[list[Tensor]] = []
        offset = 0
        for w in works:
            n = len(w.params)
            g = compute[offset : offset + n]
            offset += n
            if clip is not None:
                g = [gi * clip.to(device=gi.device, dtype=gi.dtype) for gi in g]
            per_work.append(g)
        global_: tuple[float, ...] = ()
        if any(w.rule == "prodigy" for w in works):
            if parts is not None:
                raise SgdlabError(
                    "a step of one part of a distributed model with prodigy: its estimate sums "
                    "over every parameter, which a part does not hold"
                )
            master = bf16 and self.flag("master_weights")
            points = [
                [(st["master"] if master and "master" in st else p.float()) if bf16 else p for p, st in zip(w.params, w.states)]
                for w in works
            ]
            global_ = prodigy_settle(works, per_work, points)
        self.steps += 1
        step_tensors: dict[tuple[torch.device, int], Tensor] = {}
        for w, g in zip(works, per_work):
            ctx = Context(self.steps, float(w.hp["lr"]), loss, norm_sq, numel, step_tensors, global_)
            self._step_group(w, ctx, g, bf16)
        return True

    def _check_layout(self, works: list[Work], bf16: bool) -> None:
        for w in works:
            rule = RULES[w.rule]
            if w.rule == "soap":
                for p, name in zip(w.params, w.names):
                    if p.dim() > 2:
                        raise SgdlabError(
                            f"soap steps matrices and vectors, and parameter {_name(name)} has "
                            f"shape {list(p.shape)}: give it another rule with a parameter group "
                            '({"params": ..., "rule": "adamw"})'
                        )
            elif rule.matrix:
                for p, name in zip(w.params, w.names):
                    if p.dim() != 2:
                        raise SgdlabError(
                            f"muon steps matrices only, and parameter {_name(name)} has shape "
                            f"{list(p.shape)}: give the other tensors another rule with a "
                            'parameter group ({"params": ..., "rule": "adamw"})'
                        )
            if bf16 and rule.averaging is not None:
                raise SgdlabError(
                    f"bfloat16 parameters with {w.rule} (it trains at one point and evaluates at "
                    "another, which must stay exact): keep its parameters in float32"
                )
            named = {"f32": torch.float32, "f64": torch.float64}.get(self.state_dtype)
            if named is not None:
                for p in w.params:
                    dtype = torch.float32 if bf16 else p.dtype
                    if named != dtype:
                        raise SgdlabError(
                            f"invalid state_dtype = {self.state_dtype}: the parameters are "
                            f"{_short(dtype)}: the state is kept in their type or in bf16"
                        )
            for p, g, name in zip(w.params, w.grads, w.names):
                if g.shape != p.shape:
                    raise SgdlabError(
                        f"shape mismatch in gradient of {_name(name)}: expected {list(p.shape)}, got {list(g.shape)}"
                    )

    def _step_group(self, w: Work, ctx: Context, grads: list[Tensor], bf16: bool) -> None:
        """One group's step. Each tensor counts its own steps (``scalars["t"]``; its
        ``state_dict()`` entry's ``step``), so that a parameter that joins late, or skips steps
        without a gradient, takes its own count in its bias corrections, as in torch.optim:
        tensors at the same count step together."""
        rule = RULES[w.rule]
        slot_names = rule.slots(w.hp)
        master = bf16 and self.flag("master_weights")
        # The points the rule steps: the parameters, their float32 widening, or the master copy.
        if master:
            points = []
            for p, st in zip(w.params, w.states):
                if "master" not in st:
                    st["master"] = p.float()
                points.append(st["master"])
        elif bf16:
            points = [p.float() for p in w.params]
        else:
            points = w.params
        lowp = self.state_dtype == "bf16"
        for p, st in zip(points, w.states):
            if not all(s in st for s in slot_names):
                self._init_state(rule, w.hp, p, st, slot_names, lowp)
        stored = [[st[s] for st in w.states] for s in slot_names]
        slots = [[b.to(p.dtype) for b, p in zip(bufs, points)] for bufs in stored] if lowp else stored
        scalars = [st.setdefault("scalars", {}) for st in w.states]
        own = [sc.get("t", 0) + 1 for sc in scalars]
        cohorts: dict[int, list[int]] = {}
        for i, t in enumerate(own):
            cohorts.setdefault(t, []).append(i)
        for t, idx in cohorts.items():
            c = dataclasses.replace(ctx, t=t)
            if len(cohorts) == 1:
                ps_c, gs_c, slots_c, sc_c = points, grads, slots, scalars
            else:
                ps_c, gs_c, sc_c = [points[i] for i in idx], [grads[i] for i in idx], [scalars[i] for i in idx]
                slots_c = [[b[i] for i in idx] for b in slots]
            before = [p.clone() for p in ps_c] if w.cautious else None
            rule.step(w.hp, c, ps_c, gs_c, slots_c, sc_c)
            if before is not None:
                assert rule.decay_form is not None
                _cautious(ps_c, before, gs_c, rule.decay_form(w.hp, c.decay_lr()))
        for sc, t in zip(scalars, own):
            sc["t"] = t
        if lowp:
            for k, (bufs, wide) in enumerate(zip(stored, slots)):
                for i, (b, x) in enumerate(zip(bufs, wide)):
                    key = None
                    if self.rounding == "stochastic":
                        key = stream_key(self.sr_seed, self.steps, w.index[i], k // 2)
                    narrow_bf16(x, b, self.rounding, key, k % 2)
        if bf16:
            for i, (p, x) in enumerate(zip(w.params, points)):
                if master:
                    narrow_bf16(x, p, "nearest", None)
                else:
                    key = None
                    if self.rounding == "stochastic":
                        key = stream_key(self.sr_seed, self.steps, w.index[i], _PARAM_STREAM)
                    narrow_bf16(x, p, self.rounding, key)

    @staticmethod
    def _init_state(rule: Rule, hp, p: Tensor, st: dict, slot_names, lowp: bool) -> None:
        init = float(rule.initial(hp))
        for k, s in enumerate(slot_names):
            if s in st:
                continue
            if k in rule.starts_at_params:
                buf = p.detach().clone()
            elif rule.slot_shape is not None:
                buf = torch.full(rule.slot_shape(hp, k, tuple(p.shape)), init, dtype=p.dtype, device=p.device)
            else:
                buf = torch.full_like(p, init)
            if lowp:
                low = torch.empty(p.shape, dtype=torch.bfloat16, device=p.device)
                narrow_bf16(buf, low, "nearest", None)
                buf = low
            st[s] = buf

    # -- Schedule-Free's evaluation point -------------------------------------------------

    def eval_mode(self, works: list[Work]) -> None:
        """Puts the evaluation point x into the parameters."""
        if self.in_eval_mode:
            return
        for w in works:
            rule = RULES[w.rule]
            if rule.averaging is None:
                continue
            name = rule.slots(w.hp)[rule.averaging[0]]
            for p, st in zip(w.params, w.states):
                if name in st:
                    p.copy_(st[name])
        self.in_eval_mode = True

    def train_mode(self, works: list[Work]) -> None:
        """Puts the training point βx + (1 − β)z back."""
        if not self.in_eval_mode:
            return
        for w in works:
            rule = RULES[w.rule]
            if rule.averaging is None:
                continue
            z_name, x_name = rule.slots(w.hp)[0], rule.slots(w.hp)[rule.averaging[0]]
            for p, st in zip(w.params, w.states):
                if x_name in st:
                    interpolate([p], [st[z_name]], [st[x_name]], w.hp[rule.averaging[1]])
        self.in_eval_mode = False


def _cautious(points: list[Tensor], before: list[Tensor], grads: list[Tensor], form: tuple[float, float]) -> None:
    """Cautious masking of a step already taken (``transform.rs``): the update w = s p − p′,
    kept where it agrees in sign with g′ = g + λp, and rescaled by n/(k + 1), k the kept count:
    p ← s p − n/(k + 1) [w g′ > 0] w."""
    s, l2 = form
    for p, p0, g in zip(points, before, grads):
        w = p0 * s - p
        gp = g if l2 == 0.0 else g + l2 * p0
        agree = w * gp > 0
        kept = agree.sum()
        scale = (p.numel() / (kept.to(torch.float64) + 1.0)).to(p.dtype)
        p.copy_(p0 * s - scale * torch.where(agree, w, torch.zeros_like(w)))


def _compute_grad(g: Tensor, bf16: bool) -> Tensor:
    """The gradient in the step's type: bfloat16 gradients of bfloat16 parameters widen to
    float32 (exactly)."""
    return g.float() if bf16 and g.dtype == torch.bfloat16 else g


def _prepass(grads: list[Tensor], names: list[tuple[int, int]], need_norm: bool) -> tuple[Optional[str], Optional[Tensor]]:
    """Finiteness and the squared global norm (float64), with one host synchronisation.
    Returns (the error message of the first non-finite element, or None; ‖g‖²)."""
    device = grads[0].device
    stacked = _norms(grads, need_norm, device)
    total = stacked.square().sum() if need_norm else stacked.sum()
    if bool(torch.isfinite(total)):
        return None, total if need_norm else None
    for g, name in zip(grads, names):
        bad = (~torch.isfinite(g)).reshape(-1).nonzero()
        if bad.numel():
            i = int(bad[0])
            value = _show(float(g.reshape(-1)[i]))
            return f"non-finite value {value} in gradient of {_name(name)} at index {i}", None
    return (
        "the gradients are finite but their squared norm overflows (it is infinite in the step's "
        "float type): scale the loss down",
        None,
    )


def _norms(grads: list[Tensor], need_norm: bool, device: torch.device) -> Tensor:
    """Each gradient's 2-norm accumulated in float64, as the Rust kernels do (``need_norm``),
    or its largest magnitude (a NaN or an infinity shows in either), stacked on ``device``;
    0 for an empty tensor (a process's empty shard), which has no largest element."""
    full = [g for g in grads if g.numel()]
    if not full:
        return torch.zeros(len(grads), dtype=torch.float64, device=device)
    if need_norm:
        try:
            norms = list(torch._foreach_norm(full, 2, dtype=torch.float64))
        except TypeError:  # a torch without the dtype argument
            norms = [torch.linalg.vector_norm(g, dtype=torch.float64) for g in full]
    else:
        norms = list(torch._foreach_norm(full, math.inf))
    zero = torch.zeros((), dtype=torch.float64, device=device)
    it = iter(norms)
    return torch.stack([next(it).to(device=device, dtype=torch.float64) if g.numel() else zero for g in grads])


def _prepass_parts(
    grads: list[Tensor], names: list[tuple[int, int]], need_norm: bool, parts: Any
) -> tuple[Optional[str], Optional[Tensor], int]:
    """:func:`_prepass` when the tensors are one process's part of the model: the sharded
    tensors' squared norm, size and finiteness are summed over the processes (one all-reduce),
    the others (held whole by every process) taken once. Returns (the error message, ‖g‖²,
    the model's size)."""
    device = grads[0].device
    values = _norms(grads, need_norm, device)
    if need_norm:
        values = values.square()
    sharded = torch.tensor(parts.sharded, device=device)
    own, whole = values[sharded].sum(), values[~sharded].sum()
    bad = ~torch.isfinite(own + whole)
    numel_sharded = sum(g.numel() for g, s in zip(grads, parts.sharded) if s)
    numel_whole = sum(g.numel() for g, s in zip(grads, parts.sharded) if not s)
    sums = parts.sum(torch.stack([torch.where(bad, 0.0, own), bad.double(), own.new_tensor(float(numel_sharded))]))
    total, n_bad, numel = sums.tolist()
    numel = int(numel) + numel_whole
    if bool(bad):
        message, _ = _prepass(grads, names, need_norm)
        return message, None, numel
    if n_bad > 0:
        return (
            f"non-finite gradient in {int(n_bad)} other part(s) of the model (another process): "
            "every process refuses the step",
            None,
            numel,
        )
    norm_sq = torch.tensor(total, dtype=torch.float64, device=device) + whole if need_norm else None
    return None, norm_sq, numel


def _name(position: tuple[int, int]) -> str:
    """A parameter's name in messages: "group.index"."""
    return f"{position[0]}.{position[1]}"


def _show(x: float) -> str:
    return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else repr(x)


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def _number(x: Tensor) -> float:
    return float(x) if x.device.type != "meta" else 1.0


def slot_names(rule: str, hp: dict[str, Any]) -> Sequence[str]:
    """The state buffers' names of ``rule`` with these hyper-parameters."""
    return RULES[rule].slots(hp)
