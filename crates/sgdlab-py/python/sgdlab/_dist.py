"""Parameters that are one part of a model: DTensor shards (FSDP2, tensor parallelism) and
ZeRO's partitions, and the sums of a step over the processes that hold the parts.

Element-wise rules step each process's local shard as it is. What no process sees alone —
the global gradient norm (``clip_norm``, ``normsgd``), the model's size (``normsgd``) and
whether any gradient is non-finite (``check_finite``, ``skip_nonfinite``) — is summed over
the processes with one all-reduce of three float64 numbers per step, so that every process
clips by the same factor and skips (or refuses) the same steps. Rules that read a whole tensor
(Muon's matrices, Madam's scale, cautious masking's count) refuse a shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch without DTensor
    DTensor = None  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]

# Rules that read a whole tensor, not element by element: they cannot step a shard.
WHOLE_TENSOR = {
    "muon": "orthogonalises each whole matrix",
    "madam": "scales each tensor by its root mean square",
    "soap": "rotates each whole matrix into the eigenbases of its statistics",
}


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (a distributed tensor: FSDP2, tensor parallelism)."""
    return DTensor is not None and isinstance(t, DTensor)


def is_sharded(p: Any) -> bool:
    """Whether ``p`` is a DTensor that no process holds whole (a placement other than
    Replicate)."""
    return is_dtensor(p) and any(not pl.is_replicate() for pl in p.placements)


def local(t: Any) -> torch.Tensor:
    """The tensor this process steps: a DTensor's local shard (sharing its memory), or ``t``."""
    return t._local_tensor if is_dtensor(t) else t


def local_grad(p: Any, g: torch.Tensor) -> torch.Tensor:
    """The local shard of gradient ``g`` laid out as parameter ``p``'s (redistributed first
    when its placements differ, e.g. a Partial sum of tensor parallelism)."""
    if not is_dtensor(g):
        return g
    if is_dtensor(p) and (g.device_mesh != p.device_mesh or tuple(g.placements) != tuple(p.placements)):
        g = g.redistribute(p.device_mesh, p.placements)
    return g._local_tensor


def like(value: torch.Tensor, p: Any) -> Any:
    """A state tensor as a state dict holds it: a DTensor laid out as parameter ``p`` when
    ``p`` is one (so that ``torch.distributed.checkpoint`` saves each process's shard), else
    ``value``."""
    if not is_dtensor(p) or not isinstance(value, torch.Tensor) or is_dtensor(value) or value.dim() == 0:
        return value
    return DTensor.from_local(value, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())


def local_state(value: Any, p: Any) -> torch.Tensor:
    """A state tensor of a state dict as parameter ``p``'s local shard: a DTensor's shard
    (redistributed as ``p`` when laid out otherwise), or this process's part of a whole
    tensor (a checkpoint of one process, or a full state dict)."""
    if is_dtensor(value):
        if is_dtensor(p):
            if value.device_mesh != p.device_mesh or tuple(value.placements) != tuple(p.placements):
                value = value.redistribute(p.device_mesh, p.placements)
            return value._local_tensor
        return value.full_tensor()
    if is_dtensor(p):
        return distribute_tensor(value.to(p.device_mesh.device_type), p.device_mesh, p.placements, src_data_rank=None)._local_tensor
    return value


def refuse_whole_tensor(rule: str, cautious: bool, p: Any, name: str) -> None:
    """Refuses a shard for a rule that reads whole tensors (or cautious masking, whose
    rescaling counts a whole tensor's agreeing coordinates)."""
    if not is_sharded(p):
        return
    placements = ", ".join(map(str, p.placements))
    if rule in WHOLE_TENSOR:
        raise ValueError(
            f"{rule} {WHOLE_TENSOR[rule]}, and parameter {name} is a shard (placements {placements}) "
            "of a DTensor: step it with an element-wise rule (a parameter group with "
            '"rule": "adamw"), or keep its matrix whole on each process (FSDP2: fully_shard '
            "the other modules only, or ignored_params)"
        )
    if cautious:
        raise ValueError(
            f"cautious masking rescales by the count of a whole tensor's coordinates, and parameter "
            f"{name} is a shard (placements {placements}) of a DTensor: turn cautious off for it "
            '(a parameter group with "cautious": False)'
        )


@dataclass
class Parts:
    """How a step's tensors are parts of a model held by several processes: which tensors
    are one process's part (``sharded``; the others every process holds whole) and the
    process groups whose sum is the whole model."""

    #: Per tensor of the step: whether it is one process's part of the model.
    sharded: list[bool]
    #: The process groups to sum over, in turn (a 2-D mesh sharded on both dimensions: two).
    groups: list[Any]
    #: Where the reduction's numbers live (the groups' backend: CUDA for NCCL).
    device: torch.device

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (float64) summed over every process of the groups."""
        out = values.to(self.device)
        for group in self.groups:
            torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM, group=group)
        return out


def parts_of(params: list[Any], shard_group: Any) -> Optional[Parts]:
    """The :class:`Parts` of a step over ``params`` (the optimizer's parameters, DTensors
    included), or None when every process holds the whole model (no DTensor shard, no
    ``shard_group``)."""
    if shard_group is not None:
        device = _device_of(shard_group)
        return Parts([True] * len(params), [shard_group], device)
    sharded = [is_sharded(p) for p in params]
    if not any(sharded):
        return None
    meshes = {}
    for p, s in zip(params, sharded):
        if s:
            dims = tuple(i for i, pl in enumerate(p.placements) if not pl.is_replicate())
            meshes.setdefault((p.device_mesh, dims), (p.device_mesh, dims))
    if len(meshes) > 1:
        raise ValueError(
            "the parameters are sharded over several device meshes (or mesh dimensions): sgdlab "
            "sums the gradient norm and the finiteness check over one; use one optimizer per mesh, "
            "or pass shard_group="
        )
    ((mesh, dims),) = meshes.values()
    groups = [mesh.get_group(d) for d in dims]
    device = torch.device(mesh.device_type, torch.cuda.current_device()) if mesh.device_type == "cuda" else torch.device(mesh.device_type)
    return Parts(sharded, groups, device)


def _device_of(group: Any) -> torch.device:
    """The device of a process group's collectives: CUDA for NCCL, else the CPU."""
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
