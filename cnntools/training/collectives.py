"""Collective operations of a DistributedDataParallel run, and no-ops in a single process.

`cnntools.training.distributed` sets the process group up; this module is what the training loop
calls inside it: sum a metric across ranks, share rank 0's buffers, wrap the model in DDP.
"""

from __future__ import annotations

import torch

from cnntools.core.errors import UsageError


def check_global_batch(batch_size: int, world_size: int) -> None:
    """--batch-size is the global batch: each of `world_size` processes takes an equal share."""
    if batch_size % world_size:
        raise UsageError(f"--batch-size {batch_size} is the global batch; it must divide evenly among {world_size} processes")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks when torch.distributed is running; the tensor itself otherwise."""
    import torch.distributed as dist

    if _distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model) -> None:
    """Give every rank the main rank's buffers (BatchNorm running statistics).

    Under DDP each rank updates its buffers from its own shard of the batch; the checkpoint
    holds rank 0's, so validation on every rank must use those too."""
    import torch.distributed as dist

    if _distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap_model(model, device, world_size: int):
    """The model as trained: wrapped in DistributedDataParallel when there are several ranks."""
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model
