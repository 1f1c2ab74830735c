"""The full evaluation suite behind ``hybridcl evaluate``: every protocol that applies to a model, with plots.

Protocols (names in ``metrics.json``; ``--protocols`` takes the short names in brackets):

- ``linear_probe`` [linear], ``knn`` [knn]: frozen-encoder probes (same functions as at the end of training);
- ``finetune`` [finetune]: ``AutoModelForImageClassification.from_pretrained(folder, num_labels=C)``, all weights;
- ``calibration`` [calibration]: ECE (``eval.ece_bins``, and 20 bins for the HDGE protocol), NLL, reliability PNG;
- ``ood`` [ood]: AUROC / FPR@95 of msp, energy and kNN scores against shifted test sets and a real second set;
- ``corruptions`` [corruptions]: accuracy under noise / blur / contrast at 3 severities;
- ``robust_*`` [robust]: PGD robust accuracy from :mod:`hf_hybridcl.evaluate.robust` (skipped, with the reason,
  when that module is missing or fails);
- generative numbers [generative]: a run's own ``extra_metrics`` (e.g. GCRL bits/dim) carried over from its
  ``metrics.json``, never recomputed, plus links to its sample grids;
- ``embedding`` [embedding]: t-SNE PNG of the test features and their cosine silhouette score by class.

Logits for calibration, OOD and corruptions come from the model itself when it is a classifier for this data set's
classes, otherwise from the frozen encoder + the linear probe (folded into a classifier, see ``heads.py``) or, with
``eval.calibration_source=finetune``, from the fine-tuned model. Each result's ``settings`` say which.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import HybridCLError
from .calibration import classification_metrics
from .corruptions import SEVERITIES, corruption_accuracy
from .features import extract_features, pixel_tensor, processor_for
from .finetune import finetune
from .heads import fit_linear_head, probe_classifier
from .knn import knn_accuracy
from .linear import linear_probe
from .ood import REAL_SETS, SHIFTS, knn_similarity, logit_scores, ood_detection, sample_patch_images, shifted_pixels
from .plots import corruption_plot, embedding_plot, ood_histogram, reliability_diagram

ALL_PROTOCOLS = ("linear", "knn", "finetune", "calibration", "ood", "corruptions", "robust", "generative", "embedding")
SUITE_SOURCE = "hybridcl evaluate"


@dataclass
class SuiteContext:
    """What the protocols share: the model, its pixels and features, the logits source and the output folder."""

    model: Any
    splits: Any
    cfg: dict[str, Any]
    device: torch.device | str
    out_dir: str
    model_is_classifier: bool
    train_pixels: torch.Tensor
    test_pixels: torch.Tensor
    train_x: np.ndarray
    test_x: np.ndarray
    train_y: np.ndarray
    test_y: np.ndarray
    model_dir: str = ""
    recipe: dict[str, Any] | None = None
    plots: dict[str, str] = field(default_factory=dict)
    _classifier: Any = None
    _classifier_source: str | None = None
    _finetuned: Any = None

    # -- logits -------------------------------------------------------------------------------------------------
    def classifier(self) -> tuple[Any, str]:
        """The model that gives logits for calibration / OOD / corruptions, and a sentence saying what it is."""
        choice = self.cfg.get("calibration_source", "auto")
        if choice not in ("auto", "probe", "finetune", "classifier"):
            raise HybridCLError(f"eval.calibration_source must be auto, probe, finetune or classifier, got {choice!r}.")
        if self._classifier is not None:
            return self._classifier, self._classifier_source
        if choice in ("auto", "classifier") and self.model_is_classifier:
            self._classifier, self._classifier_source = self.model, "the model's own classifier logits"
        elif choice == "classifier":
            raise HybridCLError("eval.calibration_source=classifier needs a classifier model for this data set's classes.")
        elif choice == "finetune":
            self._classifier = self.finetuned()[1]
            self._classifier_source = "softmax of the fine-tuned model (protocol finetune)"
        else:
            c = self.cfg
            head = fit_linear_head(
                self.train_x, self.train_y, self.splits.num_classes, epochs=c["linear_epochs"], lr=c["linear_lr"],
                batch_size=c["linear_batch_size"], weight_decay=c["linear_weight_decay"],
            )
            self._classifier = probe_classifier(self.model, head, dict(enumerate(self.splits.class_names)))
            self._classifier_source = (
                f"softmax of the linear probe on the frozen encoder (adam, lr {c['linear_lr']}, {c['linear_epochs']} "
                f"epochs, train-standardised features; same training as protocol linear_probe)"
            )
        return self._classifier, self._classifier_source

    def logits(self, pixels: torch.Tensor) -> np.ndarray:
        return extract_features(self.classifier()[0], pixels, self.cfg["batch_size"], self.device, kind="logits")

    def features(self, pixels: torch.Tensor) -> np.ndarray:
        return extract_features(self.model, pixels, self.cfg["batch_size"], self.device)

    def finetuned(self) -> tuple[dict, Any]:
        if self._finetuned is None:
            c = self.cfg
            self._finetuned = finetune(
                self.model_dir, self.train_pixels, self.train_y, self.test_pixels, self.test_y,
                dict(enumerate(self.splits.class_names)), epochs=c["finetune_epochs"], lr=c["finetune_lr"],
                batch_size=c["finetune_batch_size"], weight_decay=c["finetune_weight_decay"], seed=c["seed"],
                device=self.device,
            )
        return self._finetuned

    def plot_path(self, name: str) -> str:
        return os.path.join(self.out_dir, "plots", name)

    def add_plot(self, key: str, path: str) -> str:
        rel = os.path.relpath(path, self.out_dir)
        self.plots[key] = rel
        return rel


# ------------------------------------------------------------------------------------------------- protocols
def protocol_linear(ctx: SuiteContext) -> dict[str, dict]:
    c = ctx.cfg
    return {"linear_probe": linear_probe(
        ctx.train_x, ctx.train_y, ctx.test_x, ctx.test_y, epochs=c["linear_epochs"], lr=c["linear_lr"],
        batch_size=c["linear_batch_size"], weight_decay=c["linear_weight_decay"],
    )}


def protocol_knn(ctx: SuiteContext) -> dict[str, dict]:
    return {"knn": knn_accuracy(ctx.train_x, ctx.train_y, ctx.test_x, ctx.test_y, k=ctx.cfg["knn_k"], tau=ctx.cfg["knn_tau"])}


def protocol_finetune(ctx: SuiteContext) -> dict[str, dict]:
    return {"finetune": ctx.finetuned()[0]}


def protocol_calibration(ctx: SuiteContext) -> dict[str, dict]:
    _, source = ctx.classifier()
    logits = torch.as_tensor(ctx.logits(ctx.test_pixels), dtype=torch.float64)
    probs = logits.softmax(dim=1).numpy()
    labels = ctx.test_y
    bins = int(ctx.cfg["ece_bins"])
    hdge_bins = int(ctx.cfg["ece_bins_hdge"])
    metrics = classification_metrics(logits, labels, (bins, hdge_bins))
    values = {
        "ece": metrics[f"ece_{bins}"],
        f"ece_{hdge_bins}bins": metrics[f"ece_{hdge_bins}"],
        "nll": metrics["nll"],
        "accuracy": metrics["accuracy"],
        "mean_confidence": float(probs.max(1).mean()),
    }
    path = reliability_diagram(probs, labels, bins, ctx.plot_path("reliability.png"),
                               f"{ctx.splits.name} test: ECE {values['ece']:.3f} ({bins} bins)")
    return {"calibration": {
        "value": values["ece"], "values": values,
        "settings": {"bins": bins, "hdge_bins": hdge_bins, "binning": "equal-width on max softmax",
                     "probabilities": source},
        "plots": [ctx.add_plot("reliability", path)],
    }}


def protocol_ood(ctx: SuiteContext) -> dict[str, dict]:
    c = ctx.cfg
    mean, std = ctx.model.config.image_mean, ctx.model.config.image_std
    shifts, skipped = list(c["ood_shifts"]), {}
    views = (ctx.recipe or {}).get("views", {})
    if "hflip" in shifts and views.get("flip"):
        shifts.remove("hflip")
        skipped["hflip"] = "the run trained with horizontally flipped views, so mirrored images are in-distribution"
    sets: dict[str, torch.Tensor] = {name: shifted_pixels(ctx.test_pixels, name, mean, std, seed=c["seed"]) for name in shifts}
    for name in c["ood_real_sets"]:
        if name not in REAL_SETS:
            raise HybridCLError(f"unknown real OOD set {name!r}; choose from {list(REAL_SETS)} (eval.ood_real_sets=[...]).")
        images = sample_patch_images(len(ctx.test_y), ctx.model.config.num_channels, seed=c["seed"])
        sets[name] = pixel_tensor(_PilList(images), processor_for(ctx.model))
    _, source = ctx.classifier()

    def scores(pixels: torch.Tensor, features: np.ndarray) -> dict[str, np.ndarray]:
        out = logit_scores(ctx.logits(pixels))
        out["knn"] = knn_similarity(ctx.train_x, features, k=int(c["ood_knn_k"]))
        return out

    id_scores = scores(ctx.test_pixels, ctx.test_x)
    ood_scores = {name: scores(pixels, ctx.features(pixels)) for name, pixels in sets.items()}
    result = ood_detection(id_scores, ood_scores, c["ood_primary_score"])
    primary = result.pop("primary_score")
    path = ood_histogram(id_scores[primary], {k: v[primary] for k, v in ood_scores.items()}, primary,
                         ctx.plot_path("ood_scores.png"))
    result["settings"] = {
        "in_distribution": f"{ctx.splits.name} test split (positive class)",
        "ood_sets": {name: _OOD_DESCRIPTIONS[name] for name in sets},
        "ood_sets_skipped": skipped,
        "pixel_space": "[0, 1] before normalisation, clipped",
        "scores": {"msp": "max softmax probability", "energy": "log-sum-exp of the logits (-energy)",
                   "knn": f"cosine similarity to the {c['ood_knn_k']}-th nearest training feature"},
        "logits": source,
        "primary_score": primary,
        "fpr95": "share of OOD samples scoring >= the 5th percentile of in-distribution scores",
        "seed": c["seed"],
    }
    result["plots"] = [ctx.add_plot("ood_scores", path)]
    return {"ood": result}


_OOD_DESCRIPTIONS = {
    "gaussian_noise": "test images + N(0, 0.5^2) noise",
    "inverted": "test images with inverted intensities (1 - x)",
    "hflip": "horizontally mirrored test images",
    "interp": "pixel average of two different test images (HDGE 'interp')",
    "sample_patches": "random 32x32 crops of scikit-learn's bundled photographs (load_sample_images), real images",
}


class _PilList:
    """The minimal ``ImageList`` interface ``pixel_tensor`` needs, over a list of PIL images."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int):
        return self.images[index]


def protocol_corruptions(ctx: SuiteContext) -> dict[str, dict]:
    _, source = ctx.classifier()
    names = list(ctx.cfg["corruptions"])
    result = corruption_accuracy(ctx.logits, ctx.test_pixels, ctx.test_y, ctx.model.config.image_mean,
                                 ctx.model.config.image_std, names, seed=ctx.cfg["seed"])
    result["settings"]["classifier"] = source
    path = corruption_plot(result["values"], {n: list(SEVERITIES[n]) for n in names}, ctx.plot_path("corruptions.png"))
    result["plots"] = [ctx.add_plot("corruptions", path)]
    return {"corruptions": result}


def protocol_robust(ctx: SuiteContext) -> dict[str, dict]:
    try:
        from .robust import robust_evaluation
    except Exception as err:  # missing module or a broken import: the rest of the suite still runs
        return {"robust": {"skipped": f"hf_hybridcl.evaluate.robust is not available ({type(err).__name__}: {err})"}}
    try:
        results = robust_evaluation(ctx.model, ctx.splits, dict(ctx.cfg.get("robust") or {}), ctx.device)
    except Exception as err:
        return {"robust": {"skipped": f"robust_evaluation failed: {type(err).__name__}: {err}"}}
    if isinstance(results, dict) and "values" in results:
        results = {"pgd": results}
    return {f"robust_{name}": result for name, result in results.items()}


def protocol_embedding(ctx: SuiteContext) -> dict[str, dict]:
    from sklearn.metrics import silhouette_score

    perplexity = float(ctx.cfg["tsne_perplexity"])
    path = embedding_plot(ctx.test_x, ctx.test_y, ctx.splits.class_names, ctx.plot_path("embedding_tsne.png"),
                          seed=ctx.cfg["seed"], perplexity=perplexity, iterations=ctx.cfg["tsne_iterations"])
    silhouette = float(silhouette_score(ctx.test_x, ctx.test_y, metric="cosine")) if len(set(ctx.test_y)) > 1 else None
    return {"embedding": {
        "value": silhouette, "values": {"silhouette_cosine": silhouette},
        "settings": {"plot": "t-SNE (sklearn, init pca) of L2-normalised pooled test features, coloured by class",
                     "perplexity": perplexity, "iterations": ctx.cfg["tsne_iterations"], "seed": ctx.cfg["seed"],
                     "silhouette": "sklearn silhouette_score, cosine distance, test labels"},
        "plots": [ctx.add_plot("embedding_tsne", path)],
    }}


PROTOCOLS: dict[str, Callable[[SuiteContext], dict[str, dict]]] = {
    "linear": protocol_linear,
    "knn": protocol_knn,
    "finetune": protocol_finetune,
    "calibration": protocol_calibration,
    "ood": protocol_ood,
    "corruptions": protocol_corruptions,
    "robust": protocol_robust,
    "embedding": protocol_embedding,
}


def carried_over(run_metrics: dict | None, computed: set[str]) -> dict[str, dict]:
    """Protocols of the training run's metrics.json that the suite does not recompute (a method's generative
    metrics such as bits/dim, random-init references), marked ``source: training run``."""
    out = {}
    for name, result in ((run_metrics or {}).get("protocols") or {}).items():
        if name not in computed and isinstance(result, dict):
            out[name] = {"source": "training run", **result}
    return out


def sample_grids(run_dir: str | None, run_metrics: dict | None) -> list[str]:
    """Image artifacts of a run (sample grids written by a method), relative to the run directory."""
    if not run_dir:
        return []
    found = [p for p in (run_metrics or {}).get("artifacts", []) if p.lower().endswith(".png")]
    for path in glob.glob(os.path.join(run_dir, "**", "*.png"), recursive=True):
        rel = os.path.relpath(path, run_dir)
        if not rel.startswith(("plots", "model", "checkpoints")) and rel not in found:
            found.append(rel)
    return sorted(found)


def run_suite(
    model, model_dir: str, splits, cfg: dict[str, Any], protocols: list[str], out_dir: str,
    device: torch.device | str = "cpu", model_is_classifier: bool = False, recipe: dict | None = None,
) -> tuple[dict[str, dict], dict[str, str]]:
    """Run ``protocols`` (short names, see :data:`ALL_PROTOCOLS`); return ``(protocol results, plots)``."""
    unknown = [p for p in protocols if p not in ALL_PROTOCOLS]
    if unknown:
        raise HybridCLError(f"unknown protocols {unknown}; choose from {', '.join(ALL_PROTOCOLS)} (--protocols a,b).")
    labelled = splits.train.has_labels and splits.test.has_labels
    if not labelled:
        raise HybridCLError(f"data set {splits.name!r} has no labels; the evaluation protocols need a labelled data set.")
    model.eval().to(device)
    processor = processor_for(model)
    train_pixels, test_pixels = pixel_tensor(splits.train, processor), pixel_tensor(splits.test, processor)
    ctx = SuiteContext(
        model=model, splits=splits, cfg=cfg, device=device, out_dir=out_dir, model_is_classifier=model_is_classifier,
        train_pixels=train_pixels, test_pixels=test_pixels,
        train_x=extract_features(model, train_pixels, cfg["batch_size"], device),
        test_x=extract_features(model, test_pixels, cfg["batch_size"], device),
        train_y=np.asarray(splits.train.labels), test_y=np.asarray(splits.test.labels), model_dir=model_dir,
        recipe=recipe,
    )
    results: dict[str, dict] = {}
    for name in protocols:
        if name in PROTOCOLS:
            results.update(PROTOCOLS[name](ctx))
    for result in results.values():
        result.setdefault("dataset", splits.name)
        result.setdefault("split", "test")
        result.setdefault("source", SUITE_SOURCE)
        if "skipped" not in result:
            result.setdefault("train_split", "train")
    return results, ctx.plots
