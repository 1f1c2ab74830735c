"""`hybridcl evaluate` on a tiny trained run: every protocol, the schema, sane numbers, plots, carry-over, errors."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import copy_run
from hf_hybridcl.cli import main
from hf_hybridcl.errors import HybridCLError

# CPU-sized suite settings for tests (the defaults are for real runs)
CHEAP_EVAL = [
    "eval.linear_epochs=5",
    "eval.finetune_epochs=1",
    "eval.tsne_iterations=250",
    "eval.robust.slf_epochs=5",
    "eval.robust.linf_steps=2",
    "eval.robust.l2_steps=2",
    "eval.robust.max_test_images=64",
    "eval.robust.autoattack=false",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(simclr_run_template, tmp_path_factory):
    return copy_run(simclr_run_template, tmp_path_factory, "eval_suite")


@pytest.fixture(scope="module")
def evaluated(run_dir):
    """Simulate a method's generative extra metric and sample grid, then run the whole suite."""
    path = os.path.join(run_dir, "metrics.json")
    with open(path) as handle:
        metrics = json.load(handle)
    metrics["protocols"]["bits_per_dim"] = {
        "value": 2.5, "values": {"test_bits_per_dim": 2.5}, "settings": {"likelihood": "conditional"},
        "dataset": "digits", "split": "test",
    }
    with open(path, "w") as handle:
        json.dump(metrics, handle)
    os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
    Image.new("L", (8, 8)).save(os.path.join(run_dir, "samples", "grid.png"))
    assert main(["evaluate", run_dir, *CHEAP_EVAL]) == 0
    with open(path) as handle:
        return json.load(handle)


def test_every_protocol_is_reported(evaluated):
    protocols = evaluated["protocols"]
    for name in ("linear_probe", "knn", "finetune", "calibration", "ood", "corruptions", "embedding"):
        assert name in protocols and "skipped" not in protocols[name], name
        assert protocols[name]["settings"], name
        assert protocols[name]["dataset"] == "digits" and protocols[name]["split"] == "test"
    robust = [n for n in protocols if n.startswith("robust")]
    assert robust, "the robust protocol must report numbers or a skipped reason"
    for name in robust:
        assert "skipped" in protocols[name] or isinstance(protocols[name]["value"], float)
    assert evaluated["evaluation"]["command"] == "hybridcl evaluate"


def test_schema(evaluated):
    from hf_hybridcl.evaluate.schema import SCHEMA_VERSION, validate_metrics

    validate_metrics(evaluated)
    assert evaluated["schema_version"] == SCHEMA_VERSION
    broken = json.loads(json.dumps(evaluated))
    broken["protocols"]["knn"]["value"] = "high"
    del broken["dataset"]["num_test"]
    with pytest.raises(HybridCLError, match="num_test"):
        validate_metrics(broken)


def test_numbers_are_sane(evaluated):
    p = evaluated["protocols"]
    assert p["knn"]["value"] > 0.1  # above chance for 10 digit classes
    assert 0.0 <= p["calibration"]["values"]["ece"] <= 1.0
    assert 0.0 <= p["calibration"]["values"]["ece_20bins"] <= 1.0
    assert "linear probe" in p["calibration"]["settings"]["probabilities"]
    ood = p["ood"]["values"]
    for shift in ("gaussian_noise", "inverted", "hflip", "interp", "sample_patches"):
        for score in ("msp", "energy", "knn"):
            assert 0.0 <= ood[f"{shift}.{score}.auroc"] <= 1.0
            assert 0.0 <= ood[f"{shift}.{score}.fpr95"] <= 1.0
    c = p["corruptions"]["values"]
    for name in ("gaussian_noise", "gaussian_blur", "contrast"):
        assert c[f"{name}.s3"] <= c["clean"] + 0.05, name
    assert 0.0 <= p["finetune"]["value"] <= 1.0


def test_plots_are_valid_pngs(evaluated, run_dir):
    assert set(evaluated["plots"]) == {"reliability", "ood_scores", "corruptions", "embedding_tsne"}
    for rel in evaluated["plots"].values():
        for base in (run_dir, os.path.join(run_dir, "model")):  # beside metrics.json and beside the card
            path = os.path.join(base, rel)
            with open(path, "rb") as handle:
                assert handle.read(8) == PNG_MAGIC
            with Image.open(path) as img:
                img.verify()


def test_generative_metrics_and_samples_are_carried_over(evaluated):
    carried = evaluated["protocols"]["bits_per_dim"]
    assert carried["value"] == 2.5 and carried["source"] == "training run"
    assert evaluated["protocols"]["knn"]["source"] == "hybridcl evaluate"
    assert "samples/grid.png" in evaluated["artifacts"]


def test_card_is_regenerated(evaluated, run_dir):
    with open(os.path.join(run_dir, "model", "README.md")) as handle:
        card = handle.read()
    assert "| calibration |" in card and "plots/reliability.png" in card


def test_linear_head_matches_probe_and_folds_into_classifier(tiny_vit_config, digits):
    from hf_hybridcl import HybridCLModel
    from hf_hybridcl.evaluate import extract_features, pixel_tensor, processor_for
    from hf_hybridcl.evaluate.heads import fit_linear_head, probe_classifier
    from hf_hybridcl.evaluate.linear import linear_probe

    torch.manual_seed(0)
    model = HybridCLModel(tiny_vit_config).eval()
    processor = processor_for(model)
    train_px, test_px = pixel_tensor(digits.train, processor)[:300], pixel_tensor(digits.test, processor)[:100]
    ytr, yte = digits.train.labels[:300], digits.test.labels[:100]
    xtr, xte = extract_features(model, train_px), extract_features(model, test_px)
    head = fit_linear_head(xtr, ytr, 10, epochs=5)
    reference = linear_probe(xtr, ytr, xte, yte, epochs=5)
    assert float((head.logits(xte).argmax(1) == yte).mean()) == pytest.approx(reference["value"], abs=1e-6)
    classifier = probe_classifier(model, head)
    with torch.no_grad():
        logits = classifier(pixel_values=test_px).logits.numpy()
    np.testing.assert_allclose(logits, head.logits(xte), atol=1e-4)


def test_ood_metrics_reference_values():
    from hf_hybridcl.evaluate.ood import auroc_fpr95

    ind, ood = np.linspace(1.0, 2.0, 100), np.linspace(-1.0, 0.0, 50)
    assert auroc_fpr95(ind, ood) == (1.0, 0.0)
    assert auroc_fpr95(ood, ind) == (0.0, 1.0)


def test_robust_is_skipped_with_reason_when_unavailable(monkeypatch):
    from hf_hybridcl.evaluate.suite import protocol_robust

    monkeypatch.setitem(sys.modules, "hf_hybridcl.evaluate.robust", None)  # import now raises ImportError
    result = protocol_robust(None)
    assert result["robust"]["skipped"].startswith("hf_hybridcl.evaluate.robust is not available")


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch, capsys):
    from hf_hybridcl.evaluate.resolve import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HybridCLError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        resolve_model("no-such-org/no-such-model")
    assert main(["evaluate", "no-such-org/no-such-model"]) == 2
    assert "Unset HF_HUB_OFFLINE" in capsys.readouterr().err


def test_bad_protocol_and_override_are_clear_errors(run_dir, capsys):
    assert main(["evaluate", run_dir, "--protocols", "linear,telepathy"]) == 2
    assert "telepathy" in capsys.readouterr().err
    assert main(["evaluate", run_dir, "eval.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_classification_metrics_match_direct_formulas():
    from hf_hybridcl.evaluate.calibration import classification_metrics, expected_calibration_error

    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 4, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    m = classification_metrics(logits, labels.numpy(), (15, 20))
    probs = logits.softmax(1).numpy()
    assert m["accuracy"] == float((logits.argmax(1) == labels).float().mean())
    assert abs(m["nll"] - torch.nn.functional.cross_entropy(logits, labels).item()) < 1e-6
    assert m["ece_15"] == expected_calibration_error(probs, labels.numpy(), 15)
    assert m["ece_20"] == expected_calibration_error(probs, labels.numpy(), 20)
