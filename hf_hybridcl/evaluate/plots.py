"""Evaluation plots as PNG files, each written atomically (rendered to memory, then one rename)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

import numpy as np

from .calibration import reliability_bins


def _figure(width: float = 5.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _save(plt, fig, path: str) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return path


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, n_bins: int, path: str, title: str) -> str:
    """Accuracy vs confidence per bin (bars), the diagonal of perfect calibration, and the bin counts."""
    bins = reliability_bins(probs, labels, n_bins)
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    centers = 0.5 * (bins["edges"][:-1] + bins["edges"][1:])
    width = 1.0 / n_bins
    filled = bins["counts"] > 0
    ax.bar(centers[filled], bins["accuracy"][filled], width=width * 0.95, color="tab:blue", label="accuracy")
    ax.plot(centers[filled], bins["confidence"][filled], "o", color="tab:red", markersize=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max softmax)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return _save(plt, fig, path)


def embedding_plot(features: np.ndarray, labels: np.ndarray, class_names: list[str], path: str, seed: int = 0,
                   perplexity: float = 30.0, iterations: int = 500) -> str:
    """t-SNE of (L2-normalised) test features, coloured by class."""
    from sklearn.manifold import TSNE

    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(perplexity, max(2.0, (len(x) - 1) / 3.0)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max(250, int(iterations))).fit_transform(x)
    plt, fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(111)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c in np.unique(labels):
        mask = labels == c
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        ax.scatter(points[mask, 0], points[mask, 1], s=6, color=cmap(int(c) % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of test features (perplexity {perplexity:g})", fontsize=9)
    if len(class_names) <= 20:
        ax.legend(markerscale=2, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(plt, fig, path)


def corruption_plot(values: dict[str, float], severities: dict[str, list[float]], path: str) -> str:
    """Accuracy against severity, one line per corruption, the clean accuracy as a horizontal line."""
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    for name, levels in severities.items():
        accs = [values[f"{name}.s{s}"] for s in range(1, len(levels) + 1)]
        ax.plot(range(1, len(levels) + 1), accs, marker="o", label=name)
    ax.axhline(values["clean"], color="k", linestyle="--", linewidth=1, label="clean")
    ax.set_xticks([1, 2, 3])
    ax.set_xlabel("severity")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def ood_histogram(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray], score: str, path: str) -> str:
    """Distribution of one OOD score on the test split and on each OOD set."""
    plt, fig = _figure(5.5, 4.0)
    ax = fig.add_subplot(111)
    everything = np.concatenate([id_scores, *ood_scores.values()])
    edges = np.linspace(everything.min(), everything.max() + 1e-9, 40)
    ax.hist(id_scores, bins=edges, density=True, alpha=0.6, label="test (in-distribution)", color="k")
    for name, scores in ood_scores.items():
        ax.hist(scores, bins=edges, density=True, histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel(f"{score} score (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
