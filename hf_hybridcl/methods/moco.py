"""MoCo v2 (He et al. 2020, arXiv:1911.05722; Chen et al. 2020, arXiv:2003.04297): a query encoder trained with
InfoNCE against a momentum key encoder and a FIFO queue of past keys (METHODS.md 7, MoCo v2 row).

- Query encoder: the exported :class:`HybridCLModel` (backbone + MLP head, L2-normalised projection).
- Key encoder: a copy of it with ``requires_grad=False``, excluded from the optimiser and from the export, updated
  after every optimiser step by ``theta_k <- m * theta_k + (1 - m) * theta_q`` (:meth:`after_optimizer_step`).
- Loss (symmetric over the two views): ``-log exp(q.k+/tau) / (exp(q.k+/tau) + sum_{k- in queue} exp(q.k-/tau))``
  for ``(q1, k2)`` and ``(q2, k1)``, averaged.
- Queue: buffer ``queue (K, D)`` of unit-norm keys and ``queue_ptr``, in the state_dict, so checkpoints carry it.
  Each step enqueues the keys of both views, gathered from all processes (``[k1 of all; k2 of all]``), so
  ``queue_size`` must be divisible by twice the global batch.
- BatchNorm in the key encoder (ResNet backbones): with several processes the key batch is shuffled across
  processes before the key forward and unshuffled after (MoCo's shuffle-BN), so a query and its key never share
  BN statistics. On one process the shuffle would be a no-op (BN statistics of a whole batch do not depend on its
  order), so it is skipped: the key encoder then normalises with the statistics of the full key batch. The
  digits recipe uses a ViT (LayerNorm only), where none of this matters.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import HybridCLError
from ..losses import gather_no_grad, pairwise_similarity, world_size
from ..losses.hdge import check_queue_divisible
from ..modeling_hybridcl import HybridCLModel
from .base import Batch, HybridMethod, TrainContext


def moco_infonce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, eq. 1), mean over the queries.

    ``q, k`` are ``(B, D)`` unit vectors (row ``i`` of ``k`` is the positive of row ``i`` of ``q``; ``k`` is detached);
    ``queue`` is ``(K, D)`` negatives. Logits ``[q.k+, q.queue] / tau``, target index 0."""
    q, k = q.float(), k.detach().float()
    positive = (q * k).sum(-1, keepdim=True)
    negatives = pairwise_similarity(q, queue.detach().float(), "cosine")
    logits = torch.cat([positive, negatives], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@torch.no_grad()
def momentum_update(key_params, query_params, momentum: float) -> None:
    """``theta_k <- m * theta_k + (1 - m) * theta_q`` for matching parameter lists."""
    for p_k, p_q in zip(key_params, query_params):
        p_k.mul_(momentum).add_(p_q.detach(), alpha=1.0 - momentum)


class MoCoV2(HybridMethod):
    name = "moco"
    description = "MoCo v2: InfoNCE against a momentum key encoder and a FIFO queue of keys (baseline)."
    paper = "Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning, arXiv:2003.04297"
    view_kind = "two_strong"
    default_hparams = {"queue_size": 4096, "momentum": 0.99, "tau": 0.2}

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def build(self) -> None:
        hp = self.hparams
        if not 0.0 <= hp["momentum"] <= 1.0:
            raise HybridCLError(f"method_args.momentum must be in [0, 1], got {hp['momentum']} (MoCo v2: 0.99 or 0.999).")
        if hp["tau"] <= 0 or int(hp["queue_size"]) < 1:
            raise HybridCLError("method_args.tau and method_args.queue_size must be positive (MoCo v2: 0.2 and 65536).")
        if self.model_config.proj_num_layers < 1:
            raise HybridCLError("MoCo v2 needs the projection head: set model.proj_num_layers >= 1 (MoCo v2 uses 2).")
        self.model = HybridCLModel(self.model_config)
        self.key_encoder = copy.deepcopy(self.model)
        for param in self.key_encoder.parameters():
            param.requires_grad_(False)
        dim = self.model_config.proj_output_dim
        self.register_buffer("queue", F.normalize(torch.randn(int(hp["queue_size"]), dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def on_train_start(self, ctx: TrainContext) -> None:
        """Fail before the first step if the queue cannot wrap exactly."""
        batch = int(ctx.recipe["train"]["batch_size"])
        check_queue_divisible(self.queue.shape[0], 2 * batch, per_step=f"2 x the global batch ({2 * batch}; both views' keys are enqueued)")

    def optimizer_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith("key_encoder.")]

    # -- keys and queue --------------------------------------------------------------------------------------
    @torch.no_grad()
    def keys(self, views: torch.Tensor) -> torch.Tensor:
        """Unit-norm key projections ``(B, D)`` of ``views``, with shuffle-BN across processes (module docstring)."""
        if world_size() == 1:
            return self.key_encoder(views).projection.detach()
        gathered = gather_no_grad(views)
        order = torch.randperm(gathered.shape[0], device=gathered.device)
        dist.broadcast(order, src=0)  # the same permutation on every process
        rank, n = dist.get_rank(), views.shape[0]
        mine = order[rank * n : (rank + 1) * n]
        keys = gather_no_grad(self.key_encoder(gathered[mine]).projection)  # keys of gathered[order]
        unshuffled = torch.empty_like(keys)
        unshuffled[order] = keys
        return unshuffled[rank * n : (rank + 1) * n]

    @torch.no_grad()
    def dequeue_and_enqueue(self, *keys: torch.Tensor) -> None:
        """Write the keys of all processes at ``queue_ptr`` and advance it, FIFO. Each argument (``(B_local, D)``,
        e.g. the keys of one view) is gathered on its own, so the queue order is the single-process order."""
        batch = torch.cat([gather_no_grad(k.detach().to(self.queue.dtype).contiguous()) for k in keys], dim=0)
        check_queue_divisible(self.queue.shape[0], batch.shape[0])
        start = int(self.queue_ptr)
        self.queue[start : start + batch.shape[0]] = batch
        self.queue_ptr.fill_((start + batch.shape[0]) % self.queue.shape[0])

    # -- the contract ----------------------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = batch["views"][:2]
        q1, q2 = self.model(torch.cat([v1, v2], dim=0)).projection.chunk(2, dim=0)
        with torch.no_grad():
            self.key_encoder.train(self.training)
            k1, k2 = self.keys(v1), self.keys(v2)
        queue = self.queue.clone()  # the loss keeps it for backward; the enqueue below writes in place
        loss = 0.5 * (moco_infonce_loss(q1, k2, queue, self.hparams["tau"]) + moco_infonce_loss(q2, k1, queue, self.hparams["tau"]))
        self.dequeue_and_enqueue(k1, k2)  # queue order: [k1 of the global batch; k2 of the global batch]
        with torch.no_grad():
            positive_sim = 0.5 * ((q1 * k2).sum(-1).mean() + (q2 * k1).sum(-1).mean())
        return loss, {"infonce": loss.item(), "positive_cos": positive_sim.item()}

    def after_optimizer_step(self, step: int) -> None:
        momentum_update(self.key_encoder.parameters(), self.model.parameters(), self.hparams["momentum"])

    def export(self) -> HybridCLModel:
        return self.model
