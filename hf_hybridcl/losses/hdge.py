"""HDGE's generative term as a contrastive loss in logit space (Liu & Abbeel 2020, arXiv:2007.09070; METHODS.md 2b).

A C-way classifier ``f`` defines ``q(x, y) ∝ exp(f(x)[y])``. HDGE approximates the class-conditional

    log q(x|y) = f(x)[y] - log Z(y),   Z(y) = sum_x exp(f(x)[y])                       (paper, eq. 5-6)

by replacing the sum over all images with ``K`` other images' logits kept in a FIFO queue (MoCo style), which
turns ``log q(x|y)`` into an InfoNCE loss over the anchor and ``K`` queued logit vectors. What the official
code computes (and what ``positive_score="official"`` reproduces):

1. ``u = f(x) / ||f(x)||_2`` (the anchor's logit vector, L2-normalised over the C classes);
2. queue ``Q`` (C x K) of past **raw** logits, each column L2-normalised at use time: ``q_k = Q[:, k] / ||Q[:, k]||``;
3. scores ``a_0 = log sum_c exp(ybar_c * u_c)`` and ``a_k = log sum_c exp(ybar_c * q_{k,c})`` for the label
   distribution ``ybar`` (one-hot, or label-smoothed);
4. ``L_con = -log softmax([a_0, a_1, ..., a_K] / tau)[0]``, averaged over the batch (tau = 0.1).

The quirk: with a one-hot ``ybar`` the masked product is zero off the label, so
``a = log(exp(u_y) + C - 1)`` - a monotone function of the normalised label logit, not ``u_y`` itself.
``positive_score="paper"`` uses the paper's plain score ``a = sum_c ybar_c u_c`` (``= u_y`` for a one-hot label).
The negatives carry no gradient (queue and labels are constants), so they are computed without autograd and in
chunks over ``K`` (memory ``B * C * chunk`` instead of ``B * C * K``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HybridCLError
from ..distributed import gather_no_grad

PositiveScore = Literal["official", "paper"]
POSITIVE_SCORES = ("official", "paper")
_CHUNK_ELEMENTS = 1 << 24  # at most ~64 MB of float32 per chunk of the official negative scores


def hdge_label_distribution(labels: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """HDGE's (smoothed) targets ``(B, C)``: ``1 - eps`` on the label and ``eps / (C - 1)`` on every other class
    (METHODS.md 7, the CE row; unlike PyTorch's ``label_smoothing``, which puts ``eps / C`` on every class)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise HybridCLError(f"label_smoothing must be in [0, 1), got {label_smoothing}; use e.g. 0.0 or 0.1.")
    if num_classes < 2:
        raise HybridCLError(f"HDGE needs at least 2 classes, got {num_classes}.")
    off = label_smoothing / (num_classes - 1)
    dists = torch.full((labels.shape[0], num_classes), off, device=labels.device, dtype=torch.float32)
    dists.scatter_(1, labels.long().view(-1, 1), 1.0 - label_smoothing)
    return dists


def hdge_scores(
    normalized: torch.Tensor, label_dists: torch.Tensor, positive_score: PositiveScore = "official"
) -> torch.Tensor:
    """Per-anchor score of each of its own normalised logit vectors: ``(B, C)`` and ``(B, C)`` -> ``(B,)``.

    ``official``: ``log sum_c exp(ybar_c u_c)``; ``paper``: ``sum_c ybar_c u_c``."""
    product = label_dists.float() * normalized.float()
    if positive_score == "official":
        return torch.logsumexp(product, dim=-1)
    return product.sum(-1)


def _is_one_hot(label_dists: torch.Tensor) -> bool:
    """Every row is exactly one 1 and zeros (no label smoothing)."""
    return bool(((label_dists == 0) | (label_dists == 1)).all() and (label_dists.sum(dim=1) == 1).all())


@torch.no_grad()
def hdge_negative_scores(
    normalized_queue: torch.Tensor, label_dists: torch.Tensor, positive_score: PositiveScore = "official"
) -> torch.Tensor:
    """Scores of the anchors' label distributions ``(B, C)`` against every normalised queue column ``(C, K)``:
    ``(B, K)`` with ``a_k = log sum_c exp(ybar_c q_{k,c})`` (official) or ``ybar . q_k`` (paper).

    One-hot labels take the closed form ``log(exp(q_{k,y}) + C - 1)`` (``B x K`` work); smoothed labels the
    chunked ``B x C x K`` sum."""
    label_dists, normalized_queue = label_dists.float(), normalized_queue.float()
    if positive_score == "paper":
        return label_dists @ normalized_queue
    b, c = label_dists.shape
    if _is_one_hot(label_dists):  # closed form: the masked product is q[y, k] on the label and 0 elsewhere
        rows = normalized_queue[label_dists.argmax(dim=1)]  # (B, K)
        return torch.logaddexp(rows, torch.tensor(float(c - 1), device=rows.device).log())
    k = normalized_queue.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * c))
    parts = []
    for start in range(0, k, chunk):
        block = normalized_queue[:, start : start + chunk]  # (C, k')
        parts.append(torch.logsumexp(label_dists[:, :, None] * block[None, :, :], dim=1))  # (B, k')
    return torch.cat(parts, dim=1)


def hdge_contrastive_loss(
    logits: torch.Tensor,
    label_dists: torch.Tensor,
    queue: torch.Tensor,
    tau: float = 0.1,
    positive_score: PositiveScore = "official",
) -> torch.Tensor:
    """HDGE's ``L_con`` (module docstring; METHODS.md 2b step 1-4), mean over the batch.

    Args:
        logits: raw classifier logits ``(B, C)`` of the anchors (gradient flows through the positive score).
        label_dists: target distributions ``(B, C)``, see :func:`hdge_label_distribution`.
        queue: raw logits of other images ``(C, K)``; columns are L2-normalised here, no gradient flows into it.
        tau: temperature applied to the scores (0.1 in the paper and code).
        positive_score: ``"official"`` (log-sum-exp of the masked product, the released code) or ``"paper"``.
    """
    if positive_score not in POSITIVE_SCORES:
        raise HybridCLError(f"positive_score must be one of {POSITIVE_SCORES}, got {positive_score!r}.")
    if tau <= 0:
        raise HybridCLError(f"tau must be positive, got {tau}; HDGE uses 0.1.")
    if logits.ndim != 2 or label_dists.shape != logits.shape:
        raise HybridCLError(
            f"logits and label_dists must both be (batch, classes); got {tuple(logits.shape)} and {tuple(label_dists.shape)}."
        )
    if queue.ndim != 2 or queue.shape[0] != logits.shape[1]:
        raise HybridCLError(
            f"queue must be (classes, K) = ({logits.shape[1]}, K), got {tuple(queue.shape)}; "
            f"build the LogitQueue with the classifier's number of classes."
        )
    anchors = F.normalize(logits.float(), dim=-1)
    positive = hdge_scores(anchors, label_dists, positive_score)  # (B,)
    negatives = hdge_negative_scores(F.normalize(queue.detach().float(), dim=0), label_dists, positive_score)  # (B, K)
    scores = torch.cat([positive[:, None], negatives], dim=1) / tau
    return (torch.logsumexp(scores, dim=1) - scores[:, 0]).mean()


class LogitQueue(nn.Module):
    """FIFO queue of past raw logit vectors, ``queue`` ``(C, K)`` plus a pointer ``ptr`` (both buffers, so they are
    checkpointed). Initialised with N(0, 1) noise as in the official code; entries are detached; columns are
    normalised at use time by :func:`hdge_contrastive_loss`. :meth:`enqueue` gathers the logits of all processes
    first, so every process holds the same queue, in global-batch order."""

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, num_classes: int, size: int):
        super().__init__()
        if size < 1 or num_classes < 2:
            raise HybridCLError(f"LogitQueue needs size >= 1 and >= 2 classes, got size {size}, classes {num_classes}.")
        self.register_buffer("queue", torch.randn(num_classes, size))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[1]

    @torch.no_grad()
    def enqueue(self, logits: torch.Tensor) -> None:
        """Write this step's logits ``(B_local, C)`` of all processes at the pointer and advance it by the global batch."""
        batch = gather_no_grad(logits.detach().to(self.queue.dtype).contiguous())
        check_queue_divisible(self.size, batch.shape[0], "queue_size")
        start = int(self.ptr)
        self.queue[:, start : start + batch.shape[0]] = batch.T
        self.ptr.fill_((start + batch.shape[0]) % self.size)


def check_queue_divisible(queue_size: int, global_batch: int, name: str = "queue_size", per_step: str = "") -> None:
    """The FIFO pointer wraps exactly only if the queue is a multiple of what one step enqueues."""
    if global_batch < 1 or queue_size % global_batch:
        what = per_step or f"the global batch ({global_batch})"
        step = max(global_batch, 1)
        suggestion = step * max(1, round(queue_size / step))
        raise HybridCLError(
            f"method_args.{name}={queue_size} must be divisible by {what}; choose a multiple such as "
            f"{suggestion}, or change train.batch_size."
        )


class HDGEContrastiveLoss(nn.Module):
    """Thin module: :func:`hdge_contrastive_loss` against an owned :class:`LogitQueue`, which it then updates with
    the current logits (after reading the negatives, as the official code does)."""

    def __init__(self, num_classes: int, queue_size: int, tau: float = 0.1, positive_score: PositiveScore = "official"):
        super().__init__()
        if positive_score not in POSITIVE_SCORES:
            raise HybridCLError(f"positive_score must be one of {POSITIVE_SCORES}, got {positive_score!r}.")
        self.tau, self.positive_score = float(tau), positive_score
        self.queue = LogitQueue(num_classes, queue_size)

    def forward(self, logits: torch.Tensor, label_dists: torch.Tensor) -> torch.Tensor:
        loss = hdge_contrastive_loss(logits, label_dists, self.queue.queue, self.tau, self.positive_score)
        self.queue.enqueue(logits)
        return loss


__all__ = [
    "HDGEContrastiveLoss",
    "LogitQueue",
    "check_queue_divisible",
    "hdge_contrastive_loss",
    "hdge_label_distribution",
    "hdge_negative_scores",
    "hdge_scores",
]
