"""``hybridcl evaluate MODEL [--dataset D] [--protocols a,b] [--output FILE] [eval.key=value ...]``.

MODEL is a run directory (its ``model/``, recipe, data set and split seed are used), a model folder or a hub id.
Writes ``metrics.json`` (default: the run directory, the model folder, or ``hybridcl_eval/<org>--<name>/`` for a
hub id) with plots in ``plots/`` beside it, and, for a run or a model folder evaluated in place, regenerates the
model card ``README.md`` (plots copied into the model folder so its links resolve on the Hub).
"""

from __future__ import annotations

import copy
import os
import shutil
from typing import Any

from ..errors import HybridCLError
from ..io_utils import atomic_write_json
from .resolve import ModelSource, resolve_model


def eval_settings(source: ModelSource, overrides: list[str]) -> dict[str, Any]:
    """Defaults <- the run's eval section <- ``eval.key=value`` overrides (unknown keys are an error)."""
    from ..recipes import DEFAULT_RECIPE, merge, parse_override

    base = {"eval": copy.deepcopy(DEFAULT_RECIPE["eval"])}
    run_eval = (source.recipe or {}).get("eval") or {}
    known = {k: v for k, v in run_eval.items() if k in base["eval"]}
    base = merge(base, {"eval": known})
    for text in overrides or []:
        if not text.split("=", 1)[0].startswith("eval."):
            raise HybridCLError(f"override {text!r}: `hybridcl evaluate` takes eval.key=value settings only.")
        base = merge(base, parse_override(text))
    return base["eval"]


def load_splits(source: ModelSource, dataset: str | None):
    """The data set to evaluate on, split exactly as the run split it (same test fraction and seed)."""
    from ..data import load_image_splits

    recipe = source.recipe or {}
    data, train = recipe.get("data") or {}, recipe.get("train") or {}
    name = dataset or data.get("dataset") or "digits"
    same = name == data.get("dataset")
    return load_image_splits(
        name,
        data.get("image_column") if same else None,
        data.get("label_column") if same else None,
        data.get("test_fraction", 0.2),
        train.get("seed", 0),
    )


def load_model(source: ModelSource):
    from transformers import AutoModel, AutoModelForImageClassification

    from .. import HybridCLConfig

    if source.config.get("model_type") != HybridCLConfig.model_type:
        raise HybridCLError(
            f"{source.name} is not an hf_hybridcl model (model_type {source.config.get('model_type')!r}); "
            f"evaluate a folder written by `hybridcl train`."
        )
    loader = AutoModelForImageClassification if source.is_classifier else AutoModel
    return loader.from_pretrained(source.model_dir).eval()


def default_output(source: ModelSource) -> str:
    if source.kind == "run":
        return os.path.join(source.run_dir, "metrics.json")
    if source.kind == "folder":
        return os.path.join(source.model_dir, "metrics.json")
    return os.path.join("hybridcl_eval", source.name.replace("/", "--"), "metrics.json")


def parse_protocols(text: str | None, cfg: dict[str, Any]) -> list[str]:
    from .suite import ALL_PROTOCOLS

    names = [p.strip() for p in text.split(",") if p.strip()] if text else list(cfg["suite_protocols"])
    aliases = {"linear_probe": "linear", "calibration_ece": "calibration", "tsne": "embedding"}
    names = [aliases.get(n, n) for n in names]
    if "all" in names:
        names = list(ALL_PROTOCOLS)
    unknown = [n for n in names if n not in ALL_PROTOCOLS]
    if unknown:
        raise HybridCLError(f"unknown protocols {unknown}; choose from {', '.join(ALL_PROTOCOLS)} or all.")
    return names


def model_description(source: ModelSource, model) -> dict[str, Any]:
    info = dict(((source.run_metrics or {}).get("model")) or {})
    info.update({
        "method": info.get("method") or source.config.get("method", "unknown"),
        "backbone": model.config.backbone,
        "backbone_kwargs": model.config.backbone_kwargs,
        "class": type(model).__name__,
        "path": source.model_dir,
        "source": source.kind,
        "name": source.name,
    })
    return info


def evaluate_model(name: str, dataset: str | None = None, protocols: str | None = None, output: str | None = None,
                   overrides: list[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Run the suite on ``name`` and write ``metrics.json`` (+ plots, + the card); return the document."""
    from ..hub import write_card
    from .run import metrics_document
    from .schema import validate_metrics
    from .suite import carried_over, run_suite, sample_grids

    source = resolve_model(name)
    cfg = eval_settings(source, overrides or [])
    names = parse_protocols(protocols, cfg)
    splits = load_splits(source, dataset)
    model = load_model(source)
    model_is_classifier = source.is_classifier and model.config.num_labels == splits.num_classes
    output = os.path.abspath(output or default_output(source))
    out_dir = os.path.dirname(output)
    results, plots = run_suite(model, source.model_dir, splits, cfg, names, out_dir, device, model_is_classifier,
                               source.recipe)
    run_metrics = source.run_metrics or {}
    if (run_metrics.get("dataset") or {}).get("name") == splits.name:
        results = {**results, **carried_over(run_metrics, set(results))}
    grids = sample_grids(source.run_dir, run_metrics) if "generative" in names else []
    extra: dict[str, Any] = {
        "plots": plots,
        "evaluation": {
            "command": "hybridcl evaluate",
            "source": {"kind": source.kind, "name": source.name, "run_dir": source.run_dir},
            "protocols_requested": names,
            "settings": cfg,
        },
    }
    if grids:
        extra["artifacts"] = grids
    document = metrics_document(results, model_description(source, model), splits, extra)
    validate_metrics(document)
    atomic_write_json(output, document)
    if source.kind in ("run", "folder") and output == os.path.abspath(default_output(source)):
        _copy_plots(plots, out_dir, source.model_dir)
        write_card(source.model_dir, source.recipe, document, sample_grids=grids)
    return document


def _copy_plots(plots: dict[str, str], out_dir: str, model_dir: str) -> None:
    """Copy the plots next to the card (each via a temporary file and one rename)."""
    if os.path.abspath(out_dir) == os.path.abspath(model_dir):
        return
    for rel in plots.values():
        dst = os.path.join(model_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = os.path.join(os.path.dirname(dst), f".tmp_{os.path.basename(dst)}")
        shutil.copyfile(os.path.join(out_dir, rel), tmp)
        os.replace(tmp, dst)


def run_evaluate(args) -> dict[str, Any]:
    """Entry point of the ``evaluate`` sub-command (see ``hf_hybridcl.cli``)."""
    document = evaluate_model(args.model, args.dataset, args.protocols, args.output, args.overrides)
    for name, result in document["protocols"].items():
        value = result.get("value")
        shown = f"{value:.4f}" if isinstance(value, float) else f"skipped: {result['skipped']}" if "skipped" in result else "-"
        print(f"{name:32s} {shown}")
    return document
