"""NT-Xent, SupCon and GenSCL against naive loop references written from METHODS.md sections 1, 5b and 7."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from hf_hybridcl.data.mixing import cutmix, mixup
from hf_hybridcl.losses import (
    genscl_loss,
    label_similarity_contrastive_loss,
    label_weights,
    nt_xent_loss,
    soft_label_weights,
    supcon_loss,
)

GRID = list(itertools.product((2, 5, 16), (3, 8, 32), (0.05, 0.1, 0.5, 1.0)))


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------------------------------- naive references
def ref_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """METHODS.md 1: l_i = -log exp(s_ij/tau) / sum_{k != i} exp(s_ik/tau), mean over the 2N anchors."""
    z = torch.cat([z1, z2]).tolist()
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        sim = [sum(x * y for x, y in zip(z[i], z[k])) / tau for k in range(2 * n)]
        denom = sum(math.exp(sim[k]) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sim[j]) / denom)
    return total / (2 * n)


def ref_supcon(z: torch.Tensor, labels: list[int], tau: float, base_tau: float | None = None) -> float:
    """METHODS.md 7 (L_out): -(1/|P(i)|) sum_p log exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau), mean over i;
    anchors without positives contribute 0 (the shared implementation's eps convention)."""
    rows = z.tolist()
    m = len(rows)
    total = 0.0
    for i in range(m):
        sim = [sum(x * y for x, y in zip(rows[i], rows[a])) / tau for a in range(m)]
        denom = sum(math.exp(sim[a]) for a in range(m) if a != i)
        positives = [p for p in range(m) if p != i and labels[p] == labels[i]]
        if positives:
            total += -sum(math.log(math.exp(sim[p]) / denom) for p in positives) / len(positives)
    scale = 1.0 if base_tau is None else tau / base_tau
    return scale * total / m


def ref_genscl(z: torch.Tensor, dists: torch.Tensor, tau: float, base_tau: float | None = None) -> float:
    """METHODS.md 5b: s_ij = cos(l_i, l_j); -(sum_{j != i} s_ij log p_ij) / (sum_{j != i} s_ij + 1e-8), mean over i,
    times tau / base_tau."""
    rows, labels = z.tolist(), dists.tolist()
    m = len(rows)
    norm = lambda v: math.sqrt(sum(x * x for x in v))  # noqa: E731
    total = 0.0
    for i in range(m):
        sim = [sum(x * y for x, y in zip(rows[i], rows[a])) / tau for a in range(m)]
        log_denom = math.log(sum(math.exp(sim[k]) for k in range(m) if k != i))
        s = [
            sum(x * y for x, y in zip(labels[i], labels[j])) / (norm(labels[i]) * norm(labels[j])) if j != i else 0.0
            for j in range(m)
        ]
        total += -sum(s[j] * (sim[j] - log_denom) for j in range(m) if j != i) / (sum(s) + 1e-8)
    scale = 1.0 if base_tau is None else tau / base_tau
    return scale * total / m


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("n,d,tau", GRID)
def test_nt_xent_matches_reference(n, d, tau):
    z1, z2 = _unit(n, d, 1), _unit(n, d, 2)
    assert nt_xent_loss(z1, z2, tau=tau).item() == pytest.approx(ref_nt_xent(z1, z2, tau), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("n,d,tau", GRID)
def test_supcon_matches_reference(n, d, tau):
    z = torch.cat([_unit(n, d, 3), _unit(n, d, 4)])
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n * 31 + d)).repeat(2)
    got = supcon_loss(z, labels, tau=tau).item()
    assert got == pytest.approx(ref_supcon(z, labels.tolist(), tau), rel=1e-5, abs=1e-5)


def test_supcon_base_tau_scales_the_loss():
    z, labels = _unit(10, 8, 5), torch.tensor([0, 1, 0, 1, 2, 2, 0, 1, 2, 0])
    got = supcon_loss(z, labels, tau=0.1, base_tau=0.07).item()
    assert got == pytest.approx(ref_supcon(z, labels.tolist(), 0.1, base_tau=0.07), rel=1e-5)
    assert got == pytest.approx(supcon_loss(z, labels, tau=0.1).item() * 0.1 / 0.07, rel=1e-6)


def _soft_labels(kind: str, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Label distributions of 2n rows (two views): Mixup / CutMix per view, or a random teacher's softmax."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    if kind == "teacher":
        teacher = torch.nn.Linear(12, num_classes).double()
        logits = teacher(torch.randn(2 * n, 12, generator=g, dtype=torch.float64))
        return F.softmax(logits / 1.0, dim=-1).detach()
    fn = mixup if kind == "mixup" else cutmix
    images = torch.randn(n, 1, 8, 8, generator=g)
    views = [fn(images, labels, num_classes, alpha=1.0, generator=g).targets for _ in range(2)]
    return torch.cat(views).double()


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "teacher"])
@pytest.mark.parametrize("n,d,tau", [g for g in GRID if g[1] != 32 or g[0] != 16])
def test_genscl_soft_labels_match_reference(kind, n, d, tau):
    z = torch.cat([_unit(n, d, 6), _unit(n, d, 7)])
    dists = _soft_labels(kind, n, 4, seed=n * 100 + d)
    assert torch.allclose(dists.sum(-1), torch.ones(2 * n, dtype=dists.dtype), atol=1e-6)
    got = genscl_loss(z, dists, tau=tau).item()
    assert got == pytest.approx(ref_genscl(z, dists, tau), rel=1e-5, abs=1e-5)


def test_genscl_base_tau_matches_reference():
    z, dists = _unit(12, 8, 8), _soft_labels("mixup", 6, 3, seed=1)
    assert genscl_loss(z, dists, 0.1, 0.07).item() == pytest.approx(ref_genscl(z, dists, 0.1, 0.07), rel=1e-5)


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.1), (5, 8, 0.5), (16, 32, 0.05), (16, 8, 1.0)])
def test_genscl_with_one_hot_labels_equals_supcon(n, d, tau):
    """METHODS.md 8.1: GenSupCon with one-hot labels and base_tau = tau is SupCon (to 1e-6)."""
    z = torch.cat([_unit(n, d, 9), _unit(n, d, 10)])
    labels = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(n)).repeat(2)
    onehot = F.one_hot(labels, 4).double()
    assert torch.equal(soft_label_weights(onehot), label_weights(labels).double())
    got, want = genscl_loss(z, onehot, tau=tau, base_tau=tau).item(), supcon_loss(z, labels, tau=tau).item()
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert got == pytest.approx(ref_supcon(z, labels.tolist(), tau), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("kind", ["supcon", "genscl"])
def test_local_anchors_with_offset_equal_rows_of_full_loss(world, kind):
    """A process's anchors (two slices: its v1 rows and its v2 rows) against the global contrast set, masked via
    anchor_offset, give exactly the mean of the corresponding per-anchor terms of the full loss."""
    n_local, d, tau = 3, 8, 0.2
    big_n = n_local * world
    z = torch.cat([_unit(big_n, d, 11), _unit(big_n, d, 12)])  # [all v1; all v2]
    if kind == "supcon":
        labels = torch.randint(0, 3, (big_n,), generator=torch.Generator().manual_seed(3)).repeat(2)
        weights = label_weights(labels)
    else:
        weights = soft_label_weights(_soft_labels("cutmix", big_n, 3, seed=4))
    per_anchor = [label_similarity_contrastive_loss(z[i : i + 1], z, weights[i : i + 1], tau, anchor_offset=i).item()
                  for i in range(2 * big_n)]
    assert sum(per_anchor) / len(per_anchor) == pytest.approx(
        label_similarity_contrastive_loss(z, z, weights, tau).item(), rel=1e-6
    )
    for rank in range(world):
        off = rank * n_local
        for start in (off, big_n + off):
            rows = slice(start, start + n_local)
            got = label_similarity_contrastive_loss(z[rows], z, weights[rows], tau, anchor_offset=start).item()
            want = sum(per_anchor[start : start + n_local]) / n_local
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
        wrong = label_similarity_contrastive_loss(z[off : off + n_local], z, weights[off : off + n_local], tau, anchor_offset=0)
        if off:
            assert abs(wrong.item() - sum(per_anchor[off : off + n_local]) / n_local) > 1e-4
