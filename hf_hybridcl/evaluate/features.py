"""Frozen-encoder features of a data split, computed once and cached for the probes."""

from __future__ import annotations

import numpy as np
import torch

from ..data.datasets import ImageList
from ..image_processing_hybridcl import HybridCLImageProcessor


def processor_for(model) -> HybridCLImageProcessor:
    """The image processor that matches a saved model (the same one ``pipeline`` uses)."""
    return HybridCLImageProcessor.from_model_config(model.config)


def pixel_tensor(images: ImageList, processor: HybridCLImageProcessor, batch_size: int = 512) -> torch.Tensor:
    """All images of a split as one normalised tensor ``(N, C, H, W)``, through the model's image processor."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = [images.image(i) for i in range(start, min(start + batch_size, len(images)))]
        chunks.append(processor(batch, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks, dim=0)


@torch.no_grad()
def extract_features(
    model, pixels: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu", kind: str = "pooled"
) -> np.ndarray:
    """Features of a frozen model: ``pooled`` (the probe representation) or ``logits`` (classifiers)."""
    was_training = model.training
    model.eval().to(device)
    out = []
    for start in range(0, pixels.shape[0], batch_size):
        x = pixels[start : start + batch_size].to(device)
        if kind == "logits":
            out.append(model(pixel_values=x).logits.float().cpu())
        else:
            out.append(model.encode(x)[1].float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()
