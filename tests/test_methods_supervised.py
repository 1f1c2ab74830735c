"""SupCon, CE and GenSCL end to end from the CLI on the embedded digits, the KD teacher, and supervised-data errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForImageClassification

from hf_hybridcl import HybridCLConfig, HybridCLForImageClassification, HybridCLModel
from hf_hybridcl.cli import main as cli_main
from hf_hybridcl.errors import HybridCLError
from hf_hybridcl.methods import get_method_class
from tests.conftest import TINY_VIT, tiny_train_overrides


def _train(out, method: str, *extra: str, steps: int = 2) -> dict:
    args = ["train", "--method", method, "--max-steps", str(steps), "--output-dir", str(out), *tiny_train_overrides(), *extra]
    assert cli_main(args) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == steps and np.isfinite(log[-1]["loss"])
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny (untrained) digits classifier saved as a folder, the format a `ce` run exports."""
    config = HybridCLConfig(
        backbone="vit_tiny_patch16_224", backbone_kwargs=dict(TINY_VIT), image_size=16, num_channels=1,
        id2label={i: str(i) for i in range(10)},
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher")
    HybridCLForImageClassification(config).save_pretrained(path)
    return path


def test_supcon_trains_and_exports_an_encoder(tmp_path):
    metrics = _train(tmp_path / "run", "supcon")
    model = AutoModel.from_pretrained(tmp_path / "run" / "model")
    assert isinstance(model, HybridCLModel) and model.config.method == "supcon"
    assert 0.0 <= metrics["protocols"]["knn"]["value"] <= 1.0


def test_ce_exports_a_classifier_that_classifies(tmp_path, digits):
    _train(tmp_path / "run", "ce", "method_args.label_smoothing=0.1", steps=3)
    folder = tmp_path / "run" / "model"
    assert isinstance(AutoModel.from_pretrained(folder), HybridCLModel)  # the encoder part loads as an encoder too
    classifier = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert isinstance(classifier, HybridCLForImageClassification)
    assert classifier.config.id2label[3] == "3" and classifier.config.num_labels == 10
    from hf_hybridcl.evaluate.features import pixel_tensor, processor_for

    pixels = pixel_tensor(digits.test, processor_for(classifier))[:16]
    with torch.no_grad():
        out = classifier(pixels, labels=torch.as_tensor(digits.test.labels[:16]))
    assert out.logits.shape == (16, 10) and torch.isfinite(out.loss)


def test_genscl_with_mixup_cutmix_and_kd_teacher(tmp_path, teacher_dir):
    _train(tmp_path / "mix", "genscl", "method_args.mix=mixup_cutmix")
    _train(tmp_path / "kd", "genscl", "method_args.mix=mixup_cutmix", f"method_args.teacher={teacher_dir}")
    model = AutoModel.from_pretrained(tmp_path / "kd" / "model")
    assert isinstance(model, HybridCLModel)
    saved = (tmp_path / "kd" / "model" / "model.safetensors")
    from safetensors.torch import load_file

    assert not [k for k in load_file(saved) if "teacher" in k]  # the teacher is not exported
    log = [json.loads(line) for line in (tmp_path / "kd" / "train_log.jsonl").read_text().splitlines()]
    assert "genscl_kd" in log[-1] and "genscl" in log[-1]


def test_supervised_method_on_unlabelled_folder_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    for method in ("supcon", "ce", "genscl"):
        args = ["train", "--method", method, "--dataset", str(folder), "--max-steps", "1",
                "--output-dir", str(tmp_path / method), *tiny_train_overrides(batch_size=8)]
        assert cli_main(args) == 2
        err = capsys.readouterr().err
        assert "supervised" in err and "no labels" in err and "simclr" in err, err


# ------------------------------------------------------------------------------ method objects (no training loop)
def _batch(n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    views = [torch.rand(n, 1, 16, 16, generator=g) * 2 - 1 for _ in range(2)]
    return {"views": views, "labels": torch.randint(0, 10, (n,), generator=g), "index": torch.arange(n)}


def _config10() -> HybridCLConfig:
    return HybridCLConfig(
        backbone="vit_tiny_patch16_224", backbone_kwargs=dict(TINY_VIT), image_size=16, num_channels=1,
        proj_hidden_dim=32, proj_output_dim=16, id2label={i: str(i) for i in range(10)},
    )


def test_teacher_is_frozen_in_eval_mode_and_outside_the_optimiser(teacher_dir):
    config = _config10()
    method = get_method_class("genscl")(config, {"teacher": str(teacher_dir), "kd_tau": 2.0}, 10)
    method.train()
    assert not method.teacher.training and not method.teacher.model.training
    assert all(not p.requires_grad for p in method.teacher.parameters())
    names = [n for n, _ in method.optimizer_parameters()]
    assert names and not [n for n in names if n.startswith("teacher.")]
    assert "teacher" not in " ".join(method.export().state_dict())
    batch = _batch()
    reference = AutoModelForImageClassification.from_pretrained(teacher_dir).eval()
    with torch.no_grad():
        want = torch.softmax(reference(batch["views"][0]).logits / 2.0, dim=-1)
    assert torch.allclose(method.teacher(batch["views"][0]), want, atol=1e-6)
    loss, logs = method(batch)
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert loss.item() == pytest.approx(logs["genscl"] + logs["genscl_kd"], rel=1e-5)


def test_timm_teacher_from_checkpoint(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    torch.save(net.state_dict(), tmp_path / "teacher.pth")
    config = _config10()
    method = get_method_class("genscl")(config, {"teacher": f"timm:test_resnet:{tmp_path / 'teacher.pth'}"}, 10)
    x = _batch()["views"][0]
    with torch.no_grad():
        assert torch.allclose(method.teacher(x), torch.softmax(net.eval()(x), -1), atol=1e-6)
    with pytest.raises(HybridCLError, match="does not match"):
        get_method_class("genscl")(config, {"teacher": f"timm:test_resnet:{tmp_path / 'teacher.pth'}"}, 5)


def test_missing_teacher_offline_is_a_clear_error():
    config = _config10()
    with pytest.raises(HybridCLError, match="offline.*save_pretrained"):
        get_method_class("genscl")(config, {"teacher": "no-such-org/no-such-teacher"}, 10)
    with pytest.raises(HybridCLError, match="timm:NAME:CHECKPOINT"):
        get_method_class("genscl")(config, {"teacher": "timm:resnet18"}, 10)


def test_genscl_mixing_is_deterministic_given_the_seed(tiny_vit_config):
    def run(seed: int) -> list[float]:
        torch.manual_seed(seed)
        method = get_method_class("genscl")(tiny_vit_config, {"mix": "mixup_cutmix"}, 10)
        return [method(_batch(seed=s))[1]["mix_lambda"] for s in range(3)] + [method(_batch())[0].item()]

    assert run(0) == run(0)
    assert run(0) != run(1)
    torch.manual_seed(0)
    method = get_method_class("genscl")(tiny_vit_config, {}, 10)
    method(_batch())
    assert int(method.state_dict()["mix_calls"]) == 1  # checkpointed with the method, so a resume continues it


def test_bad_method_args_are_clear_errors(tiny_vit_config):
    cls = get_method_class("genscl")
    with pytest.raises(HybridCLError, match="unknown method_args.mix"):
        cls(tiny_vit_config, {"mix": "cutout"}, 10)
    with pytest.raises(HybridCLError, match="needs method_args.teacher"):
        cls(tiny_vit_config, {"kd_weight": float("inf")}, 10)
    with pytest.raises(HybridCLError, match="tau"):
        get_method_class("supcon")(tiny_vit_config, {"tau": 0.0}, 10)
    with pytest.raises(HybridCLError, match="label_smoothing"):
        get_method_class("ce")(tiny_vit_config, {"label_smoothing": 1.5}, 10)
    with pytest.raises(HybridCLError, match="supervised"):
        get_method_class("supcon")(tiny_vit_config, {}, 0)


def test_one_soft_cross_entropy_for_classifier_ce_and_hdge():
    """The classifier's soft-label loss, CE's smoothed loss and HDGE's CE term are one function: checked against
    torch's cross-entropy (one-hot and HDGE-style smoothing eps / (C - 1))."""
    from hf_hybridcl.losses.hdge import hdge_label_distribution
    from hf_hybridcl.methods.ce import cross_entropy
    from hf_hybridcl.modeling_hybridcl import soft_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=gen), torch.randint(0, 5, (6,), generator=gen)
    torch.testing.assert_close(soft_cross_entropy(logits, torch.nn.functional.one_hot(labels, 5)),
                               torch.nn.functional.cross_entropy(logits, labels))
    eps = 0.2
    targets = torch.full((6, 5), eps / 4).scatter_(1, labels[:, None], 1 - eps)
    expected = torch.nn.functional.cross_entropy(logits, targets)  # torch accepts probability targets
    torch.testing.assert_close(cross_entropy(logits, labels, eps), expected)
    torch.testing.assert_close(soft_cross_entropy(logits, hdge_label_distribution(labels, 5, eps)), expected)
