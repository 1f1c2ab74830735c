"""Evaluate an exported model on a data split and return the ``metrics.json`` document."""

from __future__ import annotations

import datetime
import math
import platform
from typing import Any

import numpy as np
import torch

from .features import extract_features, pixel_tensor, processor_for
from .knn import knn_accuracy
from .linear import linear_probe
from .schema import SCHEMA_VERSION as METRICS_SCHEMA_VERSION


def machine_description() -> str:
    return f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}, " + (
        f"cuda {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    )


def evaluate_encoder(
    model,
    splits,
    eval_cfg: dict[str, Any],
    device: torch.device | str = "cpu",
    random_init_model=None,
) -> dict[str, dict]:
    """Linear probe and weighted kNN on frozen features of ``model`` (and, optionally, of a randomly
    initialised twin as a reference). Returns ``{protocol: result}``."""
    protocols = set(eval_cfg.get("protocols", ["linear", "knn"]))
    if not splits.train.has_labels or not splits.test.has_labels:
        return {}
    processor = processor_for(model)
    train_pixels = pixel_tensor(splits.train, processor)
    test_pixels = pixel_tensor(splits.test, processor)
    results: dict[str, dict] = {}
    candidates = [("", model)] + ([("_random_init", random_init_model)] if random_init_model is not None else [])
    for suffix, candidate in candidates:
        train_x = extract_features(candidate, train_pixels, eval_cfg.get("batch_size", 256), device)
        test_x = extract_features(candidate, test_pixels, eval_cfg.get("batch_size", 256), device)
        train_y, test_y = np.asarray(splits.train.labels), np.asarray(splits.test.labels)
        if "linear" in protocols:
            results["linear_probe" + suffix] = linear_probe(
                train_x, train_y, test_x, test_y,
                epochs=eval_cfg.get("linear_epochs", 100),
                lr=eval_cfg.get("linear_lr", 1e-2),
                batch_size=eval_cfg.get("linear_batch_size", 256),
                weight_decay=eval_cfg.get("linear_weight_decay", 0.0),
            )
        if "knn" in protocols:
            results["knn" + suffix] = knn_accuracy(
                train_x, train_y, test_x, test_y, k=eval_cfg.get("knn_k", 20), tau=eval_cfg.get("knn_tau", 0.07)
            )
    if hasattr(model, "classifier"):  # classifier methods (ce, hdge): the model's own predictions
        results["classifier"] = classifier_accuracy(model, test_pixels, splits.test.labels, eval_cfg, device)
    for result in results.values():
        result.setdefault("dataset", splits.name)
        result.setdefault("split", "test")
        result.setdefault("train_split", "train")
    return results


def classifier_accuracy(model, test_pixels: torch.Tensor, test_labels, eval_cfg: dict[str, Any], device) -> dict:
    """Test accuracy, ECE and NLL of a classifier's own softmax predictions (clean, un-augmented inputs)."""
    from .calibration import classification_metrics

    logits = torch.as_tensor(extract_features(model, test_pixels, eval_cfg.get("batch_size", 256), device, kind="logits"))
    bins = int(eval_cfg.get("ece_bins", 15))
    metrics = classification_metrics(logits, test_labels, (bins,))
    return {
        "value": metrics["accuracy"],
        "values": {"test_accuracy": metrics["accuracy"], f"ece_{bins}_bins": metrics[f"ece_{bins}"], "nll": metrics["nll"]},
        "settings": {"predictions": "the model's own classifier, softmax of logits", "ece_bins": bins},
    }


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: non-finite numbers become ``None`` (recursively in dicts and lists)."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def metrics_document(protocols: dict[str, dict], model_info: dict, splits, extra: dict | None = None) -> dict:
    """The ``metrics.json`` document (schema in :mod:`hf_hybridcl.evaluate.schema`). Protocols without a data
    set or split (e.g. a method's ``extra_metrics``) are stamped with this evaluation's; non-finite numbers
    become ``null``."""
    from .. import __version__

    protocols = finite_or_none(protocols)
    for result in protocols.values():
        result.setdefault("dataset", splits.name)
        result.setdefault("split", "test")
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "library": "hf_hybridcl",
        "library_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "model": model_info,
        "dataset": {
            "name": splits.name,
            "num_train": len(splits.train),
            "num_test": len(splits.test),
            "num_classes": splits.num_classes,
        },
        "protocols": protocols,
        **(extra or {}),
    }
