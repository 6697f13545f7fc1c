"""Process-group setup for torchrun (DDP): NCCL on CUDA, gloo on CPU. A single process needs none of it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks the local CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"Invalid device: {name!r}; CUDA is not available here (use device=cpu or auto)")
        return torch.device(name)
    raise ValueError(f"Invalid device: {name!r}; expected auto, cpu, cuda or cuda:N")


def _export_submitit_environment() -> None:
    """Inside a multi-task SLURM job started by Hydra's submitit launcher (tasks_per_node > 1), set the
    torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from the SLURM job."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        import submitit
    except ImportError:
        return
    try:
        submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(backend: str, device: torch.device) -> DistContext:
    """Join the process group that torchrun (or a multi-task submitit job) describes, if any."""
    _export_submitit_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"Invalid distributed.backend: {backend!r}; expected auto, nccl or gloo")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sums(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """Sum each tensor over ranks in one collective (keys must be the same, in the same order, on every rank)."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].float().reshape(()) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(keys, stacked.unbind()))


def broadcast_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank when any rank says True (used to stop all ranks together on divergence)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
