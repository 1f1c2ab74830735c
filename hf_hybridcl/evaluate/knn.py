"""Weighted kNN classifier on L2-normalised features (Wu et al. 2018 InstDisc weighting: exp(cos / T))."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_classify(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    k: int = 20,
    tau: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Class scores ``(n_test, C)``: each of the k nearest train features (cosine) votes ``exp(sim / tau)``."""
    xtr = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    xte = F.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    ytr = torch.as_tensor(train_y, dtype=torch.long)
    num_classes = num_classes or int(ytr.max().item()) + 1
    k = min(k, xtr.shape[0])
    scores = []
    for start in range(0, xte.shape[0], chunk):
        sim = xte[start : start + chunk] @ xtr.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / tau).exp()
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, ytr[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores).numpy()


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20, tau: float = 0.07
) -> dict:
    scores = knn_classify(train_x, train_y, test_x, k=k, tau=tau, num_classes=int(max(train_y.max(), test_y.max())) + 1)
    accuracy = float((scores.argmax(1) == np.asarray(test_y)).mean())
    return {
        "value": accuracy,
        "values": {"test_accuracy": accuracy},
        "settings": {"k": k, "tau": tau, "similarity": "cosine", "weighting": "exp(sim / tau)"},
    }
