"""Mixup / CutMix (METHODS.md 5b): kept-area lambda, label rows, identity at lambda=1, seeded reproducibility."""

from __future__ import annotations

import pytest
import torch

from hf_hybridcl.data.mixing import MIX_MODES, cutmix, cutmix_box, mix_batch, mixup
from hf_hybridcl.errors import HybridCLError


def _batch(n: int = 8, c: int = 3, h: int = 10, w: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("seed", range(20))
def test_cutmix_lambda_is_the_kept_area_after_clipping(seed):
    images, labels = _batch(seed=seed)
    # distinct per-image constants make the pasted pixels identifiable
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 10, 12).clone()
    out = cutmix(images, labels, 5, alpha=1.0, generator=torch.Generator().manual_seed(seed))
    pasted = out.images != images
    moved = out.perm != torch.arange(8)
    kept_area = 1.0 - pasted[moved].float().mean().item() if moved.any() else out.lam
    assert out.lam == pytest.approx(kept_area, abs=1e-6)
    # the pasted region is the same box for every image and partner rows get 1 - lam of the mass
    assert torch.equal(pasted[moved], pasted[moved][:1].expand_as(pasted[moved]))
    onehot_b = torch.nn.functional.one_hot(labels[out.perm], 5).float()
    onehot_a = torch.nn.functional.one_hot(labels, 5).float()
    assert torch.allclose(out.targets, out.lam * onehot_a + (1 - out.lam) * onehot_b)


def test_cutmix_box_is_clipped_at_the_border():
    # lam = 0 asks for a full-size box; any centre other than the middle clips it, and lam follows the clipped area
    g = torch.Generator().manual_seed(3)
    images, labels = _batch(n=4, h=9, w=9)
    lams = {round(cutmix(images, labels, 5, generator=g, lam=0.0).lam, 6) for _ in range(30)}
    assert any(lam > 0.0 for lam in lams), "a clipped box must keep part of the image"
    top, bottom, left, right = cutmix_box(9, 9, 0.0, torch.Generator().manual_seed(0))
    assert 0 <= top <= bottom <= 9 and 0 <= left <= right <= 9


@pytest.mark.parametrize("mode", MIX_MODES)
def test_label_rows_sum_to_one(mode):
    images, labels = _batch(n=16)
    for seed in range(10):
        out = mix_batch(images, labels, 5, mode, 1.0, torch.Generator().manual_seed(seed))
        assert out.targets.shape == (16, 5)
        assert torch.allclose(out.targets.sum(-1), torch.ones(16))
        assert (out.targets >= 0).all()
        assert out.images.shape == images.shape


def test_mixup_with_lambda_one_is_identity():
    images, labels = _batch()
    out = mixup(images, labels, 5, generator=torch.Generator().manual_seed(1), lam=1.0)
    assert torch.equal(out.images, images)
    assert torch.equal(out.targets, torch.nn.functional.one_hot(labels, 5).float())


def test_mixup_is_the_convex_combination():
    images, labels = _batch()
    out = mixup(images, labels, 5, generator=torch.Generator().manual_seed(2))
    assert 0.0 <= out.lam <= 1.0
    assert torch.allclose(out.images, out.lam * images + (1 - out.lam) * images[out.perm])


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "mixup_cutmix"])
def test_reproducible_with_a_seeded_generator(mode):
    images, labels = _batch()
    a = mix_batch(images, labels, 5, mode, 1.0, torch.Generator().manual_seed(7))
    b = mix_batch(images, labels, 5, mode, 1.0, torch.Generator().manual_seed(7))
    c = mix_batch(images, labels, 5, mode, 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) and a.lam == b.lam
    assert not (torch.equal(a.images, c.images) and a.lam == c.lam)


def test_mixup_cutmix_uses_both_mixes():
    images, labels = _batch()
    kinds = set()
    for seed in range(30):
        out = mix_batch(images, labels, 5, "mixup_cutmix", 1.0, torch.Generator().manual_seed(seed))
        kinds.add("mixup" if torch.allclose(out.images, out.lam * images + (1 - out.lam) * images[out.perm]) else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_lambda_follows_beta_alpha():
    g = torch.Generator().manual_seed(0)
    images, labels = _batch()
    small = [mixup(images, labels, 5, alpha=0.2, generator=g).lam for _ in range(300)]
    # Beta(0.2, 0.2) puts most mass near 0 and 1; Beta(1, 1) is uniform
    assert sum(1 for v in small if v < 0.1 or v > 0.9) / len(small) > 0.6
    uniform = [mixup(images, labels, 5, alpha=1.0, generator=g).lam for _ in range(300)]
    assert 0.4 < sum(uniform) / len(uniform) < 0.6


def test_bad_mode_and_alpha_are_clear_errors():
    images, labels = _batch()
    with pytest.raises(HybridCLError, match="unknown mix"):
        mix_batch(images, labels, 5, "cutout")
    with pytest.raises(HybridCLError, match="mix_alpha must be positive"):
        mixup(images, labels, 5, alpha=0.0)
