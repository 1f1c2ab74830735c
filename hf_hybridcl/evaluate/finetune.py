"""End-to-end fine-tuning through the public loading path: ``AutoModelForImageClassification.from_pretrained``.

The saved folder is loaded exactly as a user would load it (backbone from the checkpoint, a fresh classifier when
the folder holds an encoder or a classifier with another label set), trained for a few epochs with AdamW on the
un-augmented training split (CPU-sized defaults), and scored on the test split.
"""

from __future__ import annotations

import numpy as np
import torch

from .features import extract_features


def finetune(
    model_dir: str,
    train_pixels: torch.Tensor,
    train_y: np.ndarray,
    test_pixels: torch.Tensor,
    test_y: np.ndarray,
    id2label: dict[int, str],
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.05,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[dict, torch.nn.Module]:
    """Fine-tune all weights; return the protocol result and the fine-tuned classifier (eval mode)."""
    from transformers import AutoModelForImageClassification

    torch.manual_seed(seed)
    labels = {int(k): str(v) for k, v in id2label.items()}
    model = AutoModelForImageClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        ignore_mismatched_sizes=True,
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-train_pixels.shape[0] // batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    ytr = torch.as_tensor(train_y, dtype=torch.long)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(train_pixels.shape[0], generator=generator)
        for start in range(0, train_pixels.shape[0], batch_size):
            idx = order[start : start + batch_size]
            loss = model(pixel_values=train_pixels[idx].to(device), labels=ytr[idx].to(device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    train_acc = float((extract_features(model, train_pixels, 256, device, kind="logits").argmax(1) == train_y).mean())
    test_acc = float((extract_features(model, test_pixels, 256, device, kind="logits").argmax(1) == test_y).mean())
    result = {
        "value": test_acc,
        "values": {"test_accuracy": test_acc, "train_accuracy": train_acc},
        "settings": {
            "loader": "AutoModelForImageClassification.from_pretrained(model_dir, num_labels=C)",
            "trained_parameters": "all",
            "optimizer": "adamw",
            "epochs": epochs,
            "lr": lr,
            "schedule": "cosine per step",
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "augmentation": "none (test-time preprocessing of the model's image processor)",
            "seed": seed,
        },
    }
    return result, model
