"""Linear probe on frozen, cached features (METHODS.md section 1; EBCLR protocol 4f uses Adam on cached features)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
    generator = torch.Generator().manual_seed(seed)
    xtr, xte = torch.as_tensor(train_x, dtype=torch.float32), torch.as_tensor(test_x, dtype=torch.float32)
    ytr, yte = torch.as_tensor(train_y, dtype=torch.long), torch.as_tensor(test_y, dtype=torch.long)
    mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    num_classes = int(max(ytr.max(), yte.max()).item()) + 1
    layer = torch.nn.Linear(xtr.shape[1], num_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    for _ in range(epochs):
        order = torch.randperm(xtr.shape[0], generator=generator)
        for start in range(0, xtr.shape[0], batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(layer(xtr[idx]), ytr[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    with torch.no_grad():
        train_acc = (layer(xtr).argmax(1) == ytr).float().mean().item()
        test_acc = (layer(xte).argmax(1) == yte).float().mean().item()
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
