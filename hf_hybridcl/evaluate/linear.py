"""Linear probe on frozen, cached features (METHODS.md section 1; EBCLR protocol 4f uses Adam on cached features)."""

from __future__ import annotations

import numpy as np


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict:
    """Train a linear classifier (Adam, cross-entropy) on standardised train features; report test accuracy.

    Features are standardised with the train mean/std (part of the probe, so the lr transfers across encoders)."""
    from .heads import fit_linear_head

    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    head = fit_linear_head(train_x, train_y, num_classes, epochs, lr, batch_size, weight_decay, seed)
    train_acc = float((head.logits(train_x).argmax(1) == np.asarray(train_y)).mean())
    test_acc = float((head.logits(test_x).argmax(1) == np.asarray(test_y)).mean())
    return {
        "value": test_acc,
        "values": {"test_accuracy": test_acc, "train_accuracy": train_acc},
        "settings": {
            "classifier": "linear",
            "optimizer": "adam",
            "epochs": epochs,
            "lr": lr,
            "schedule": "cosine",
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "feature_standardisation": "train mean/std",
            "features": "frozen encoder pooled output, un-augmented test-time preprocessing",
        },
    }
