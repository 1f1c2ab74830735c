"""Calibration: expected calibration error and reliability-diagram bins (METHODS.md section 1, HDGE 2f)."""

from __future__ import annotations

import numpy as np


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: count, mean confidence and accuracy of the max-softmax predictions."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds confidences in (edges[b], edges[b+1]]; confidence 0 goes to the first bin
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=n_bins)
    safe = np.maximum(counts, 1.0)
    return {"edges": edges, "counts": counts, "confidence": conf_sum / safe, "accuracy": acc_sum / safe}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum_b (|b| / n) |acc(b) - conf(b)| over equal-width max-softmax confidence bins."""
    bins = reliability_bins(probs, labels, n_bins)
    total = bins["counts"].sum()
    return float(np.sum(bins["counts"] / max(total, 1.0) * np.abs(bins["accuracy"] - bins["confidence"])))


def classification_metrics(logits, labels, ece_bins=(15,)) -> dict[str, float]:
    """Accuracy, NLL and ECE (one value per bin count, key ``ece_<bins>``) of softmax predictions from ``logits``
    ``(N, C)`` (a torch tensor, computed in its own dtype) against integer ``labels``."""
    import torch

    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    probs = logits.softmax(dim=1).numpy()
    out = {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "nll": float(torch.nn.functional.cross_entropy(logits, labels)),
    }
    for bins in ece_bins:
        out[f"ece_{int(bins)}"] = expected_calibration_error(probs, labels.numpy(), int(bins))
    return out
