"""Two real gloo processes (CPU, forked, file rendezvous so no TCP port can clash with other test sessions):
the MoCo and HDGE queues after one enqueue with half the batch per process equal the single-process queue after
enqueueing the global batch (same order); MoCo's shuffle-BN key path returns the single-process keys; and the
HDGE loss gradient, all-reduce-averaged over the processes, equals the single-process global-batch gradient."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_hybridcl import HybridCLConfig
from hf_hybridcl.losses.hdge import LogitQueue, hdge_contrastive_loss, hdge_label_distribution
from hf_hybridcl.methods.moco import MoCoV2

WORLD, B, C, K, D_IN = 2, 8, 5, 16, 7
TINY = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def _config() -> HybridCLConfig:
    return HybridCLConfig(
        backbone="vit_tiny_patch16_224", backbone_kwargs=dict(TINY), image_size=8, num_channels=1,
        proj_hidden_dim=16, proj_output_dim=6,
    )


def _global_data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    return {
        "x": torch.randn(B, D_IN, generator=gen, dtype=torch.float64),
        "w": torch.randn(D_IN, C, generator=gen, dtype=torch.float64),
        "labels": torch.randint(0, C, (B,), generator=gen),
        "logits": torch.randn(B, C, generator=gen),
        "k1": torch.randn(B, 6, generator=gen),
        "k2": torch.randn(B, 6, generator=gen),
        "views": torch.randn(B, 1, 8, 8, generator=gen),
    }


def _compute(rows: slice, world: int) -> dict[str, torch.Tensor]:
    """What one process computes from its rows of the global batch (all rows when ``world == 1``)."""
    data = _global_data()
    torch.manual_seed(0)  # identical queues and key encoders on every process
    logit_queue = LogitQueue(C, K)
    queue0 = logit_queue.queue.clone()
    moco = MoCoV2(_config(), {"queue_size": 32})
    # HDGE gradient of a linear classifier f(x) = x W, averaged over processes like DDP does
    w = data["w"].clone().requires_grad_(True)
    logits = data["x"][rows] @ w
    dists = hdge_label_distribution(data["labels"][rows], C, label_smoothing=0.1).double()
    loss = hdge_contrastive_loss(logits, dists, queue0.double(), tau=0.1)
    loss.backward()
    grad = w.grad.clone()
    if world > 1:
        dist.all_reduce(grad)
        grad /= world
    logit_queue.enqueue(data["logits"][rows])
    moco.dequeue_and_enqueue(data["k1"][rows], data["k2"][rows])
    moco.eval()
    keys = moco.keys(data["views"][rows])
    return {"grad": grad, "hdge_queue": logit_queue.queue.clone(), "hdge_ptr": logit_queue.ptr.clone(),
            "moco_queue": moco.queue.clone(), "moco_ptr": moco.queue_ptr.clone(), "keys": keys}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        per = B // world
        torch.save(_compute(slice(rank * per, (rank + 1) * per), world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_queues_and_hdge_gradient_equal_single_process(tmp_path):
    single = _compute(slice(0, B), 1)
    mp.start_processes(_worker, args=(WORLD, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    data = _global_data()
    for result in ranks:
        torch.testing.assert_close(result["hdge_queue"], single["hdge_queue"], rtol=0, atol=0)
        torch.testing.assert_close(result["moco_queue"], single["moco_queue"], rtol=0, atol=0)
        assert int(result["hdge_ptr"]) == int(single["hdge_ptr"]) == B
        assert int(result["moco_ptr"]) == int(single["moco_ptr"]) == 2 * B
        torch.testing.assert_close(result["grad"], single["grad"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(single["hdge_queue"][:, :B], data["logits"].T)  # global order, not rank-major
    torch.testing.assert_close(single["moco_queue"][: 2 * B], torch.cat([data["k1"], data["k2"]]))
    keys = torch.cat([r["keys"] for r in ranks])  # shuffle-BN path: each rank gets the keys of its own rows back
    torch.testing.assert_close(keys, single["keys"], rtol=1e-5, atol=1e-5)
