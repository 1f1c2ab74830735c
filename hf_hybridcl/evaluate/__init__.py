"""Evaluation protocols: each returns ``{"value", "values", "settings"}``; ``hybridcl evaluate`` runs the suite.

Frozen-encoder probes (linear, kNN), fine-tuning, calibration, OOD detection, corruptions, robustness and plots;
:func:`evaluate_model` runs them on a run directory, model folder or hub id and writes ``metrics.json`` (schema:
:mod:`hf_hybridcl.evaluate.schema`).
"""

from .features import extract_features, pixel_tensor, processor_for
from .knn import knn_accuracy, knn_classify
from .linear import linear_probe


def evaluate_model(*args, **kwargs):
    """See :func:`hf_hybridcl.evaluate.cli.evaluate_model` (imported lazily: it pulls in plotting and the hub)."""
    from .cli import evaluate_model as _evaluate_model

    return _evaluate_model(*args, **kwargs)


__all__ = [
    "evaluate_model", "extract_features", "knn_accuracy", "knn_classify", "linear_probe", "pixel_tensor", "processor_for",
]
