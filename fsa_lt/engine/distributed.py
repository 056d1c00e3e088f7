"""Data-parallel helpers over torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_hint: str | None = None) -> bool:
    """Join the process group when launched by torchrun; return whether distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (tdist.is_available() and tdist.is_initialized()):
        return is_distributed()
    use_cuda = torch.cuda.is_available() and (device_hint or "cuda").startswith("cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    tdist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal- or unequal-length first dimensions from every rank (rank order)."""
    if not is_distributed():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    tdist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    m = max(sizes)
    pad = torch.zeros((m - t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    buf = [torch.empty((m,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device) for _ in sizes]
    tdist.all_gather(buf, torch.cat([t, pad]))
    return torch.cat([b[:s] for b, s in zip(buf, sizes)])


def cleanup() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
