"""Out-of-distribution detection (METHODS.md section 1 and HDGE 2f): AUROC and FPR at 95% TPR.

In-distribution (ID, positive class) is the test split. OOD sets are documented transformations of that split,
done in [0, 1] pixel space before normalisation, plus one real second data set (never random noise alone):

- ``gaussian_noise``: every test image plus strong N(0, 0.5^2) noise (the digit stays partly visible);
- ``inverted``: ``1 - x`` (dark strokes on a light background);
- ``hflip``: a horizontal mirror. Mirrored digits and letters are not valid classes; for natural images a mirror
  is in-distribution, so the suite skips it when the run was trained with flipped views;
- ``interp``: the pixel average of two different test images (HDGE's "interp" set);
- ``sample_patches`` (real): random 32x32 crops of scikit-learn's two bundled photographs
  (``sklearn.datasets.load_sample_images``: a Chinese temple and a flower), resized by the model's processor -
  real natural-image content, available offline, disjoint from every training set we ship.

Scores (higher = more in-distribution): ``msp`` = max softmax probability, ``energy`` = log-sum-exp of the logits
(JEM/HDGE's log p(x) up to a constant), both from a classifier or the linear probe; ``knn`` = cosine similarity of
the L2-normalised pooled feature to its k-th nearest training feature (needs no labels or head).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import HybridCLError
from .corruptions import from_unit, to_unit

SHIFTS = ("gaussian_noise", "inverted", "hflip", "interp")
REAL_SETS = ("sample_patches",)
NOISE_SIGMA = 0.5
PATCH_SIZE = 32


def shifted_pixels(pixels: torch.Tensor, name: str, mean, std, seed: int = 0) -> torch.Tensor:
    """A transformed copy of normalised test pixels (see the module docstring), returned normalised."""
    images = to_unit(pixels, mean, std)
    generator = torch.Generator().manual_seed(seed)
    if name == "gaussian_noise":
        out = images + NOISE_SIGMA * torch.randn(images.shape, generator=generator, dtype=images.dtype)
    elif name == "inverted":
        out = 1.0 - images
    elif name == "hflip":
        out = torch.flip(images, dims=[-1])
    elif name == "interp":
        order = torch.randperm(images.shape[0], generator=generator)
        partner = torch.empty_like(order)
        partner[order] = torch.roll(order, 1)  # every image is mixed with a different one
        out = 0.5 * (images + images[partner])
    else:
        raise HybridCLError(f"unknown OOD shift {name!r}; choose from {list(SHIFTS)} (eval.ood_shifts=[...]).")
    return from_unit(out, mean, std)


def sample_patch_images(count: int, num_channels: int, seed: int = 0, size: int = PATCH_SIZE) -> list[Image.Image]:
    """``count`` random ``size`` x ``size`` crops of scikit-learn's bundled photographs (offline, real images)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    mode = "L" if num_channels == 1 else "RGB"
    patches = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - size + 1)
        left = rng.integers(photo.shape[1] - size + 1)
        patches.append(Image.fromarray(photo[top : top + size, left : left + size]).convert(mode))
    return patches


def knn_similarity(train_features: np.ndarray, features: np.ndarray, k: int = 5) -> np.ndarray:
    """Cosine similarity of each feature to its k-th nearest training feature."""
    train = torch.nn.functional.normalize(torch.as_tensor(train_features, dtype=torch.float32), dim=1)
    query = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query.shape[0], 1024):
        sims = query[start : start + 1024] @ train.T
        out.append(sims.topk(k, dim=1).values[:, -1])
    return torch.cat(out).numpy()


def logit_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """``msp`` and ``energy`` (log-sum-exp) scores of a batch of logits."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    return {"msp": x.softmax(dim=1).max(dim=1).values.numpy(), "energy": torch.logsumexp(x, dim=1).numpy()}


def auroc_fpr95(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[float, float]:
    """AUROC (ID = positive) and the share of OOD samples scoring at or above the 95%-TPR threshold."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    auroc = float(roc_auc_score(y, np.concatenate([id_scores, ood_scores])))
    threshold = np.percentile(id_scores, 5.0)  # 95% of ID samples score >= threshold
    return auroc, float(np.mean(ood_scores >= threshold))


def ood_detection(
    id_scores: dict[str, np.ndarray], ood_scores: dict[str, dict[str, np.ndarray]], primary: str
) -> dict:
    """Protocol result: ``values["<set>.<score>.auroc" | ".fpr95"]``, means per score, headline = mean AUROC of
    the ``primary`` score over the OOD sets."""
    values: dict[str, float] = {}
    for set_name, per_score in ood_scores.items():
        for score, scores in per_score.items():
            auroc, fpr = auroc_fpr95(id_scores[score], scores)
            values[f"{set_name}.{score}.auroc"] = auroc
            values[f"{set_name}.{score}.fpr95"] = fpr
    for score in id_scores:
        for metric in ("auroc", "fpr95"):
            found = [v for k, v in values.items() if k.endswith(f".{score}.{metric}")]
            if found:
                values[f"mean.{score}.{metric}"] = float(np.mean(found))
    if primary not in id_scores:
        primary = next(iter(id_scores))
    return {"value": values.get(f"mean.{primary}.auroc"), "values": values, "primary_score": primary}
