"""Robust evaluation of a frozen encoder (Tran et al., METHODS.md 6f): SLF / ALF linear heads, then clean accuracy,
PGD-20 L∞, L2-PGD and (when ``torchattacks`` is installed) AutoAttack on the whole model ``head(encoder(x))``.

- SLF, standard linear fine-tuning: the encoder is frozen, a linear layer is trained on clean training images.
- ALF, adversarial linear fine-tuning: the linear layer is trained on PGD-10 examples of the whole model
  (L∞ ε 8/255, step 2/255), regenerated against the current head every batch.
- Test attacks (all in [0, 1] pixel space, random start): PGD-20 L∞ ε 8/255 step 0.8/255; L2-PGD ε 0.5 step 0.05,
  20 steps; AutoAttack "standard" L∞ ε 8/255 (torchattacks).

Differences from the paper's protocol, for CPU budgets (all in each result's ``settings``): the head is trained on
cached un-augmented features (no pad-crop/flip); features are standardised with the training mean/std (folded into
the head, so attacks see it) instead of L2-normalised; ALF runs a few epochs and starts from the SLF head. The model
is evaluated as exported (for dual-BN training that is the exported BatchNorm branch). Entry point:
:func:`robust_evaluation`; every result is ``{"value", "values", "settings", ...}`` like the linear probe's.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HybridCLError
from ..robust.attacks import Normalize, cross_entropy_attack, eval_mode
from .features import pixel_tensor, processor_for

DEFAULT_ROBUST_SETTINGS: dict[str, Any] = {
    "probes": ["slf", "alf"],
    "head_lr": 0.1,
    "head_momentum": 0.9,
    "head_weight_decay": 1e-4,
    "slf_epochs": 100,
    "slf_batch_size": 512,
    "alf_epochs": 5,
    "alf_batch_size": 128,
    "alf_eps": 8 / 255,
    "alf_step": 2 / 255,
    "alf_steps": 10,
    "linf_eps": 8 / 255,
    "linf_step": 0.8 / 255,
    "linf_steps": 20,
    "l2_eps": 0.5,
    "l2_step": 0.05,
    "l2_steps": 20,
    "autoattack": True,
    "autoattack_max_images": None,
    "max_test_images": None,
    "batch_size": 256,
    "seed": 0,
}
PROBES = ("slf", "alf")
INSTALL_HINT = "pip install 'hf-hybridcl[robust]'  (installs torchattacks)"


class PixelClassifier(nn.Module):
    """``head(standardise(encoder(normalise(x))))``: the whole model on [0, 1] pixels, as attacks need it."""

    def __init__(self, model: nn.Module, normalize: Normalize, feat_mean: torch.Tensor, feat_std: torch.Tensor, num_classes: int):
        super().__init__()
        self.model, self.normalize = model, normalize
        self.register_buffer("feat_mean", feat_mean.detach().clone())
        self.register_buffer("feat_std", feat_std.detach().clone())
        self.head = nn.Linear(feat_mean.numel(), num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised frozen-encoder features of [0, 1] pixels."""
        pooled = self.model.encode(self.normalize(x))[1].float()
        return (pooled - self.feat_mean) / self.feat_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resolve_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(DEFAULT_ROBUST_SETTINGS)
    unknown = sorted(set(settings or {}) - set(merged))
    if unknown:
        raise HybridCLError(f"unknown robust evaluation settings {unknown}; valid keys: {sorted(merged)}.")
    merged.update(settings or {})
    probes = [merged["probes"]] if isinstance(merged["probes"], str) else list(merged["probes"])
    bad = [p for p in probes if p not in PROBES]
    if bad or not probes:
        raise HybridCLError(f"robust evaluation probes must be a non-empty subset of {PROBES}, got {merged['probes']}.")
    merged["probes"] = probes
    return merged


def to_unit_pixels(model, images, batch_size: int = 512) -> torch.Tensor:
    """A split as [0, 1] pixels ``(N, C, H, W)``: the model's image processor, then its normalisation undone."""
    normalize = Normalize(model.config.image_mean, model.config.image_std)
    return normalize.inverse(pixel_tensor(images, processor_for(model), batch_size)).clamp(0.0, 1.0)


@torch.no_grad()
def _features(classifier: PixelClassifier, pixels: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    return torch.cat([classifier.features(pixels[i : i + batch_size].to(device)).cpu() for i in range(0, len(pixels), batch_size)])


def _head_optimizer(head: nn.Linear, s: dict, total_steps: int):
    optimizer = torch.optim.SGD(head.parameters(), lr=s["head_lr"], momentum=s["head_momentum"], weight_decay=s["head_weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(1.0, t / max(1, total_steps)))))
    return optimizer, scheduler


def train_slf(classifier: PixelClassifier, train_x: torch.Tensor, train_y: torch.Tensor, s: dict, device) -> dict:
    """Standard linear fine-tuning on cached clean features (SGD, cosine); returns train accuracy."""
    feats = _features(classifier, train_x, s["batch_size"], device).to(device)
    labels = train_y.to(device)
    generator = torch.Generator().manual_seed(int(s["seed"]))
    steps_per_epoch = math.ceil(len(feats) / s["slf_batch_size"])
    optimizer, scheduler = _head_optimizer(classifier.head, s, s["slf_epochs"] * steps_per_epoch)
    for _ in range(int(s["slf_epochs"])):
        order = torch.randperm(len(feats), generator=generator).to(device)
        for start in range(0, len(feats), s["slf_batch_size"]):
            idx = order[start : start + s["slf_batch_size"]]
            loss = F.cross_entropy(classifier.head(feats[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        return {"train_accuracy": float((classifier.head(feats).argmax(1) == labels).float().mean())}


def train_alf(classifier: PixelClassifier, train_x: torch.Tensor, train_y: torch.Tensor, s: dict, device) -> dict:
    """Adversarial linear fine-tuning: each batch is attacked (PGD-10 L∞ on the whole model with the current head),
    then the head takes one SGD step on the adversarial features. Returns the last epoch's adversarial accuracy."""
    generator = torch.Generator().manual_seed(int(s["seed"]) + 1)
    steps_per_epoch = math.ceil(len(train_x) / s["alf_batch_size"])
    optimizer, scheduler = _head_optimizer(classifier.head, s, s["alf_epochs"] * steps_per_epoch)
    correct = seen = 0
    for epoch in range(int(s["alf_epochs"])):
        correct = seen = 0
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(train_x), s["alf_batch_size"]):
            idx = order[start : start + s["alf_batch_size"]]
            x, y = train_x[idx].to(device), train_y[idx].to(device)
            x_adv = cross_entropy_attack(classifier, x, y, s["alf_eps"], s["alf_step"], int(s["alf_steps"]), "linf", generator=generator)
            with torch.no_grad(), eval_mode(classifier):
                feats = classifier.features(x_adv)
            logits = classifier.head(feats)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    return {"train_adversarial_accuracy": correct / max(1, seen)}


def attacked_accuracy(
    classifier: PixelClassifier, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, step: float, steps: int,
    batch_size: int, device, seed: int,
) -> dict[str, float]:
    """Accuracy on clean inputs and on PGD (random start) inputs of the whole model."""
    generator = torch.Generator().manual_seed(seed)
    clean = robust = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        x_adv = cross_entropy_attack(classifier, xb, yb, eps, step, steps, norm, generator=generator)
        with torch.no_grad(), eval_mode(classifier):
            clean += int((classifier(xb).argmax(1) == yb).sum())
            robust += int((classifier(x_adv).argmax(1) == yb).sum())
    n = max(1, len(x))
    return {"clean_accuracy": clean / n, "robust_accuracy": robust / n, "attack_success_rate": 1.0 - robust / max(1, clean)}


def autoattack_accuracy(classifier: PixelClassifier, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int, batch_size: int, device, seed: int) -> dict:
    """AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), L∞, through torchattacks."""
    import torchattacks

    attack = torchattacks.AutoAttack(classifier, norm="Linf", eps=eps, version="standard", n_classes=num_classes, seed=seed)
    robust = 0
    with eval_mode(classifier):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
            x_adv = attack(xb, yb)
            with torch.no_grad():
                robust += int((classifier(x_adv).argmax(1) == yb).sum())
    return {"robust_accuracy": robust / max(1, len(x))}


def robust_evaluation(model, splits, settings: dict[str, Any] | None = None, device: torch.device | str = "cpu") -> dict[str, dict]:
    """SLF and/or ALF heads on the frozen ``model`` (a ``HybridCLModel`` as exported), then clean, PGD-20 L∞,
    L2-PGD and AutoAttack accuracy on the test split. Returns ``{"<probe>_<metric>": result}``."""
    s = resolve_settings(settings)
    if not splits.train.has_labels or not splits.test.has_labels:
        raise HybridCLError(f"robust evaluation needs labelled train and test splits; {splits.name!r} has no labels.")
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    torch.manual_seed(int(s["seed"]))
    train_x, test_x = to_unit_pixels(model, splits.train), to_unit_pixels(model, splits.test)
    train_y = torch.as_tensor(splits.train.labels, dtype=torch.long)
    test_y = torch.as_tensor(splits.test.labels, dtype=torch.long)
    if s["max_test_images"]:
        test_x, test_y = test_x[: int(s["max_test_images"])], test_y[: int(s["max_test_images"])]
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    normalize = Normalize(model.config.image_mean, model.config.image_std).to(device)
    raw = PixelClassifier(model, normalize, torch.zeros(1), torch.ones(1), 1).to(device)  # identity standardisation
    train_feats = _features(raw, train_x, s["batch_size"], device)
    classifier = PixelClassifier(model, normalize, train_feats.mean(0), train_feats.std(0).clamp_min(1e-6), num_classes).to(device)
    common = {
        "encoder": "frozen, eval mode, as exported (dual-BN runs: the exported branch)",
        "features": "pooled output standardised with train mean/std (folded into the head)",
        "head_optimizer": f"sgd lr {s['head_lr']} momentum {s['head_momentum']} wd {s['head_weight_decay']}, cosine",
        "pixel_space": "[0, 1]; model normalises internally",
        "num_test": len(test_x),
    }
    results: dict[str, dict] = {}
    heads: dict[str, dict] = {}
    slf_state = None
    if "slf" in s["probes"] or "alf" in s["probes"]:
        info = train_slf(classifier, train_x, train_y, s, device)
        slf_state = copy.deepcopy(classifier.head.state_dict())
        heads["slf"] = {"state": slf_state, "info": info, "settings": {
            "probe": "SLF", "epochs": s["slf_epochs"], "batch_size": s["slf_batch_size"],
            "train_images": "clean, un-augmented (cached features)"}}
    if "alf" in s["probes"]:
        info = train_alf(classifier, train_x, train_y, s, device)
        heads["alf"] = {"state": copy.deepcopy(classifier.head.state_dict()), "info": info, "settings": {
            "probe": "ALF", "epochs": s["alf_epochs"], "batch_size": s["alf_batch_size"], "init": "SLF head",
            "train_attack": f"PGD-{s['alf_steps']} Linf eps {s['alf_eps']:.5f} step {s['alf_step']:.5f}, random start"}}
    attacks = {
        f"pgd{s['linf_steps']}_linf": ("linf", s["linf_eps"], s["linf_step"], int(s["linf_steps"])),
        f"pgd{s['l2_steps']}_l2": ("l2", s["l2_eps"], s["l2_step"], int(s["l2_steps"])),
    }
    for probe in s["probes"]:
        classifier.head.load_state_dict(heads[probe]["state"])
        base = {**common, **heads[probe]["settings"]}
        first = None
        for name, (norm, eps, step, steps) in attacks.items():
            out = attacked_accuracy(classifier, test_x, test_y, norm, eps, step, steps, s["batch_size"], device, int(s["seed"]))
            first = first or out
            results[f"{probe}_{name}"] = {
                "value": out["robust_accuracy"], "values": {**out, **heads[probe]["info"]},
                "settings": {**base, "attack": f"PGD {norm}", "eps": eps, "step_size": step, "steps": steps, "random_start": True},
            }
        results[f"{probe}_clean"] = {
            "value": first["clean_accuracy"], "values": {"test_accuracy": first["clean_accuracy"], **heads[probe]["info"]},
            "settings": base,
        }
        results[f"{probe}_autoattack"] = _autoattack_entry(classifier, test_x, test_y, s, num_classes, device, base)
    for result in results.values():
        result.setdefault("dataset", splits.name)
        result.setdefault("split", "test")
        result.setdefault("train_split", "train")
    model.train(was_training)
    return results


def _autoattack_entry(classifier, test_x, test_y, s, num_classes, device, base) -> dict:
    settings = {**base, "attack": "AutoAttack standard (torchattacks)", "norm": "Linf", "eps": s["linf_eps"]}
    if not s["autoattack"]:
        return {"value": None, "values": {}, "settings": settings, "skipped": "disabled (settings autoattack=false)"}
    if importlib.util.find_spec("torchattacks") is None:
        return {"value": None, "values": {}, "settings": settings,
                "skipped": f"torchattacks is not installed; enable with: {INSTALL_HINT}"}
    n = int(s["autoattack_max_images"] or len(test_x))
    settings["num_test"] = min(n, len(test_x))
    out = autoattack_accuracy(classifier, test_x[:n], test_y[:n], s["linf_eps"], num_classes, s["batch_size"], device, int(s["seed"]))
    return {"value": out["robust_accuracy"], "values": out, "settings": settings}


__all__ = [
    "DEFAULT_ROBUST_SETTINGS", "PixelClassifier", "attacked_accuracy", "autoattack_accuracy", "resolve_settings",
    "robust_evaluation", "to_unit_pixels", "train_alf", "train_slf",
]
