"""A fitted linear probe as a pixel-space classifier, for the protocols that need logits of an encoder.

:func:`fit_linear_head` trains exactly what :func:`hf_hybridcl.evaluate.linear.linear_probe` trains (same
standardisation, zero initialisation, Adam, cosine schedule, shuffling seed) but keeps the weights;
:func:`probe_classifier` folds the standardisation into the layer and puts it on the encoder's backbone, giving a
``HybridCLForImageClassification`` whose logits on pixels equal the probe's logits on features. Calibration, OOD
scores, corruptions and PGD attacks of an encoder then run through one ordinary classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class LinearHead:
    weight: torch.Tensor  # (C, D), acts on standardised features
    bias: torch.Tensor  # (C,)
    mean: torch.Tensor  # (1, D) train feature mean
    std: torch.Tensor  # (1, D) train feature std

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = (torch.as_tensor(features, dtype=torch.float32) - self.mean) / self.std
        with torch.no_grad():
            return (x @ self.weight.T + self.bias).numpy()

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias acting on raw features: ``W (x - m) / s + b = (W / s) x + (b - W m / s)``."""
        weight = self.weight / self.std
        bias = self.bias - (weight @ self.mean.T).squeeze(1)
        return weight, bias


def fit_linear_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> LinearHead:
    """The linear probe's training (see the module docstring), returning the fitted layer."""
    generator = torch.Generator().manual_seed(seed)
    xtr = torch.as_tensor(train_x, dtype=torch.float32)
    ytr = torch.as_tensor(train_y, dtype=torch.long)
    mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
    xtr = (xtr - mean) / std
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
    return LinearHead(layer.weight.detach().clone(), layer.bias.detach().clone(), mean, std)


def probe_classifier(encoder, head: LinearHead, id2label: dict[int, str] | None = None):
    """A ``HybridCLForImageClassification`` = the encoder's backbone + the folded probe (eval mode)."""
    from ..modeling_hybridcl import HybridCLForImageClassification

    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    num_classes = head.weight.shape[0]
    labels = id2label or {i: str(i) for i in range(num_classes)}
    config.id2label = {int(k): v for k, v in labels.items()}
    config.label2id = {v: int(k) for k, v in labels.items()}
    config.architectures = ["HybridCLForImageClassification"]
    classifier = HybridCLForImageClassification(config)
    classifier.backbone.load_state_dict(encoder.backbone.state_dict())
    weight, bias = head.folded()
    with torch.no_grad():
        classifier.classifier.weight.copy_(weight)
        classifier.classifier.bias.copy_(bias)
    return classifier.eval()
