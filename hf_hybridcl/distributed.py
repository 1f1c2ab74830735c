"""Autograd-aware all-gather, so contrastive negatives span all processes.

``accelerator.gather`` carries no gradient. :func:`gather_with_grad` all-gathers in the forward pass and, in the
backward pass, sums the incoming gradients over processes (all-reduce) and returns this rank's slice. With every
process averaging its local anchors and the data-parallel wrapper averaging parameter gradients, the result is
exactly the gradient of the single-process loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = _world()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes along dim 0, keeping the gradient path (identity on 1 process).
    All processes must pass the same shape."""
    world, _ = _world()
    if world == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (for queues and labels); identity on 1 process."""
    world, _ = _world()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def rank_offset(rows: int) -> int:
    """Row where this process's samples start in a gathered tensor."""
    return _world()[1] * rows


def world_size() -> int:
    return _world()[0]


def rank() -> int:
    """This process's index (0 on a single process)."""
    return _world()[1]
