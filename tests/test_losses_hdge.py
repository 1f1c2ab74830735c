"""HDGE's logit-space contrastive loss and LogitQueue against naive references and METHODS.md 8 invariants 3 and 4."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from hf_hybridcl.errors import HybridCLError
from hf_hybridcl.losses import hdge as hdge_losses
from hf_hybridcl.losses.hdge import (
    HDGEContrastiveLoss,
    LogitQueue,
    check_queue_divisible,
    hdge_contrastive_loss,
    hdge_label_distribution,
    hdge_scores,
)


def naive_hdge_loss(logits, label_dists, queue, tau, mode):
    """Loop-by-loop METHODS.md 2b (float64 autograd): normalise, score each entry, InfoNCE with target 0."""
    b, c = logits.shape
    k = queue.shape[1]
    total = 0.0
    for i in range(b):
        norm = torch.sqrt(sum(logits[i, j] ** 2 for j in range(c)))
        u = [logits[i, j] / norm for j in range(c)]

        def score(vec):
            if mode == "official":
                return torch.log(sum(torch.exp(label_dists[i, j] * vec[j]) for j in range(c)))
            return sum(label_dists[i, j] * vec[j] for j in range(c))

        scores = [score(u)]
        for col in range(k):
            qnorm = math.sqrt(sum(float(queue[j, col]) ** 2 for j in range(c)))
            scores.append(score([float(queue[j, col]) / qnorm for j in range(c)]))
        scores = [s / tau for s in scores]
        total = total - (scores[0] - torch.log(sum(torch.exp(s) for s in scores)))
    return total / b


GRID = list(itertools.product([1, 3, 8], [2, 5, 10], [1, 4, 16], [0.05, 0.1, 1.0]))


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_loss_and_gradient_match_naive_loop(mode):
    gen = torch.Generator().manual_seed(0)
    for b, c, k, tau in GRID:
        logits = torch.randn(b, c, generator=gen, dtype=torch.float64) * 3
        labels = torch.randint(0, c, (b,), generator=gen)
        dists = hdge_label_distribution(labels, c, label_smoothing=0.2 if k == 4 else 0.0).double()
        queue = torch.randn(c, k, generator=gen, dtype=torch.float64)
        ours_in = logits.clone().requires_grad_(True)
        ref_in = logits.clone().requires_grad_(True)
        ours = hdge_contrastive_loss(ours_in, dists, queue, tau=tau, positive_score=mode)
        ref = naive_hdge_loss(ref_in, dists, queue, tau, mode)
        ours.backward()
        ref.backward()
        assert abs(ours.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item())), (b, c, k, tau, mode)
        torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-5)


def test_chunked_negatives_equal_unchunked(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    logits, queue = torch.randn(6, 7, generator=gen), torch.randn(7, 50, generator=gen)
    dists = hdge_label_distribution(torch.randint(0, 7, (6,), generator=gen), 7, 0.1)
    full = hdge_contrastive_loss(logits, dists, queue)
    monkeypatch.setattr(hdge_losses, "_CHUNK_ELEMENTS", 6 * 7 * 3)  # 3 queue columns per chunk
    assert torch.allclose(hdge_contrastive_loss(logits, dists, queue), full, atol=1e-6)


def test_one_hot_closed_form_negatives_equal_general_sum(monkeypatch):
    """One-hot labels take the B x K closed form; it equals the general B x C x K log-sum-exp."""
    gen = torch.Generator().manual_seed(4)
    queue = F.normalize(torch.randn(10, 300, generator=gen), dim=0)
    onehot = hdge_label_distribution(torch.randint(0, 10, (16,), generator=gen), 10)
    closed = hdge_losses.hdge_negative_scores(queue, onehot)
    monkeypatch.setattr(hdge_losses, "_is_one_hot", lambda dists: False)
    torch.testing.assert_close(closed, hdge_losses.hdge_negative_scores(queue, onehot), rtol=1e-6, atol=1e-6)
    assert not hdge_losses._is_one_hot(hdge_label_distribution(torch.tensor([1, 2]), 10, 0.1))


def test_invariant_3_positive_scores_with_one_hot():
    """METHODS.md 8, invariant 3: official = log(exp(u_y) + C - 1), paper = u_y."""
    gen = torch.Generator().manual_seed(2)
    c = 10
    u = F.normalize(torch.randn(5, c, generator=gen), dim=-1)
    labels = torch.tensor([0, 3, 9, 3, 7])
    onehot = hdge_label_distribution(labels, c)
    u_y = u[torch.arange(5), labels]
    torch.testing.assert_close(hdge_scores(u, onehot, "official"), torch.log(torch.exp(u_y) + c - 1))
    torch.testing.assert_close(hdge_scores(u, onehot, "paper"), u_y)


def test_official_loss_closed_form_with_one_hot():
    gen = torch.Generator().manual_seed(3)
    c, k, tau = 4, 9, 0.1
    logits, queue = torch.randn(3, c, generator=gen), torch.randn(c, k, generator=gen)
    labels = torch.tensor([1, 0, 3])
    u_y = F.normalize(logits, dim=-1)[torch.arange(3), labels]
    q_y = F.normalize(queue, dim=0)[labels]  # (3, K)
    scores = torch.cat([torch.log(u_y.exp() + c - 1)[:, None], torch.log(q_y.exp() + c - 1)], 1) / tau
    expected = F.cross_entropy(scores, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(hdge_contrastive_loss(logits, hdge_label_distribution(labels, c), queue, tau), expected)


def test_invariant_4_queue_fifo_full_overwrite_and_no_grad():
    """METHODS.md 8, invariant 4: after K/B enqueues every column is overwritten; entries carry no gradient."""
    torch.manual_seed(0)
    c, k, b = 5, 12, 4
    queue = LogitQueue(c, k)
    initial = queue.queue.clone()
    assert initial.std() > 0.5  # N(0, 1) initialisation
    batches = [torch.randn(b, c, requires_grad=True) * 2 for _ in range(k // b)]
    for step, logits in enumerate(batches):
        queue.enqueue(logits)
        assert int(queue.ptr) == ((step + 1) * b) % k
    assert int(queue.ptr) == 0  # wrapped
    assert not torch.isclose(queue.queue, initial).any()
    torch.testing.assert_close(queue.queue, torch.cat(batches).detach().T)  # FIFO order, raw (unnormalised) logits
    assert not queue.queue.requires_grad and queue.queue.grad_fn is None
    newest = torch.randn(b, c)
    queue.enqueue(newest)  # the oldest columns go first
    torch.testing.assert_close(queue.queue[:, :b], newest.T)
    torch.testing.assert_close(queue.queue[:, b:], torch.cat(batches[1:]).detach().T)


def test_queue_size_must_be_divisible_by_batch():
    queue = LogitQueue(3, 10)
    with pytest.raises(HybridCLError, match="divisible"):
        queue.enqueue(torch.randn(4, 3))
    with pytest.raises(HybridCLError, match="train.batch_size"):
        check_queue_divisible(65536, 96)
    check_queue_divisible(65536, 128)


def test_module_reads_negatives_before_enqueueing():
    torch.manual_seed(0)
    module = HDGEContrastiveLoss(num_classes=4, queue_size=8, tau=0.1)
    before = module.queue.queue.clone()
    logits, dists = torch.randn(4, 4), hdge_label_distribution(torch.tensor([0, 1, 2, 3]), 4)
    loss = module(logits, dists)
    torch.testing.assert_close(loss, hdge_contrastive_loss(logits, dists, before, 0.1))
    torch.testing.assert_close(module.queue.queue[:, :4], logits.T)
    assert "queue.queue" in module.state_dict() and "queue.ptr" in module.state_dict()


def test_label_smoothing_is_hdge_form():
    dists = hdge_label_distribution(torch.tensor([2, 0]), 5, label_smoothing=0.2)
    torch.testing.assert_close(dists.sum(-1), torch.ones(2))
    assert dists[0, 2] == pytest.approx(0.8) and dists[1, 0] == pytest.approx(0.8)
    off = dists[0, [0, 1, 3, 4]]
    torch.testing.assert_close(off, torch.full((4,), 0.05))  # eps / (C - 1), not PyTorch's eps / C
    torch.testing.assert_close(hdge_label_distribution(torch.tensor([1]), 3), torch.tensor([[0.0, 1.0, 0.0]]))
    with pytest.raises(HybridCLError, match="label_smoothing"):
        hdge_label_distribution(torch.tensor([0]), 3, label_smoothing=1.0)


def test_bad_inputs_name_the_problem():
    logits, dists = torch.randn(2, 3), hdge_label_distribution(torch.tensor([0, 1]), 3)
    with pytest.raises(HybridCLError, match="positive_score"):
        hdge_contrastive_loss(logits, dists, torch.randn(3, 4), positive_score="mean")
    with pytest.raises(HybridCLError, match="queue must be"):
        hdge_contrastive_loss(logits, dists, torch.randn(4, 4))
    with pytest.raises(HybridCLError, match="tau"):
        hdge_contrastive_loss(logits, dists, torch.randn(3, 4), tau=0.0)
