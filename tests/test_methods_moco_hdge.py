"""MoCo v2 and HDGE methods: momentum update, queue FIFO and checkpointing, key encoder kept out of training and
export, and short CLI runs whose exported folders load with the Auto classes and the image-classification pipeline."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from hf_hybridcl.errors import HybridCLError
from hf_hybridcl.methods.hdge import HDGE
from hf_hybridcl.methods.moco import MoCoV2
from hf_hybridcl.recipes import DEFAULT_RECIPE
from hf_hybridcl.train import build_optimizer

from .conftest import tiny_train_overrides


def _batch(n: int = 4, size: int = 16, views: int = 2, classes: int = 10) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "views": [torch.randn(n, 1, size, size, generator=gen) for _ in range(views)],
        "labels": torch.randint(0, classes, (n,), generator=gen),
        "index": torch.arange(n),
    }


def _ctx(batch_size: int) -> SimpleNamespace:
    return SimpleNamespace(recipe={"train": {"batch_size": batch_size}})


# --------------------------------------------------------------------------------------------------------- MoCo
def test_momentum_update_formula(tiny_vit_config):
    method = MoCoV2(tiny_vit_config, {"momentum": 0.9, "queue_size": 16})
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in method.key_encoder.named_parameters()}
    query = dict(method.model.named_parameters())
    method.after_optimizer_step(0)
    for name, p_k in method.key_encoder.named_parameters():
        expected = 0.9 * before[name] + 0.1 * query[name]
        torch.testing.assert_close(p_k, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p_k, query[name])


def test_key_encoder_has_no_grad_and_is_not_optimised(tiny_vit_config):
    method = MoCoV2(tiny_vit_config, {"queue_size": 16})
    loss, logs = method.training_step(_batch())
    loss.backward()
    assert torch.isfinite(loss) and "infonce" in logs
    assert all(p.grad is None and not p.requires_grad for p in method.key_encoder.parameters())
    assert any(p.grad is not None for p in method.model.parameters())
    optimizer = build_optimizer(method, dict(DEFAULT_RECIPE["optim"]))
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in method.model.parameters()}
    assert not any(name.startswith("key_encoder") for name, _ in method.optimizer_parameters())
    assert method.export() is method.model


def test_queue_fifo_order_pointer_wrap_and_state_dict(tiny_vit_config):
    method = MoCoV2(tiny_vit_config, {"queue_size": 12})
    d = tiny_vit_config.proj_output_dim
    steps = [(torch.randn(3, d), torch.randn(3, d)) for _ in range(3)]
    method.dequeue_and_enqueue(*steps[0])
    torch.testing.assert_close(method.queue[:6], torch.cat(steps[0]))
    assert int(method.queue_ptr) == 6
    method.dequeue_and_enqueue(*steps[1])
    assert int(method.queue_ptr) == 0  # wrapped
    method.dequeue_and_enqueue(*steps[2])  # overwrites the oldest keys first
    torch.testing.assert_close(method.queue, torch.cat([*steps[2], *steps[1]]))
    assert int(method.queue_ptr) == 6

    state = method.state_dict()
    assert {"queue", "queue_ptr"} <= set(state) and any(k.startswith("key_encoder.") for k in state)
    restored = MoCoV2(tiny_vit_config, {"queue_size": 12})
    assert not torch.equal(restored.queue, method.queue)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, method.queue) and int(restored.queue_ptr) == 6


def test_moco_queue_divisibility_error(tiny_vit_config):
    method = MoCoV2(tiny_vit_config, {"queue_size": 100})
    with pytest.raises(HybridCLError, match="2 x the global batch"):
        method.on_train_start(_ctx(32))
    with pytest.raises(HybridCLError, match="momentum"):
        MoCoV2(tiny_vit_config, {"momentum": 1.5})


# --------------------------------------------------------------------------------------------------------- HDGE
def test_hdge_step_enqueues_logits_and_checkpoints_queue(tiny_vit_config):
    from hf_hybridcl import HybridCLConfig

    config = HybridCLConfig(**{**tiny_vit_config.to_dict(), "id2label": {i: str(i) for i in range(10)}})
    method = HDGE(config, {"queue_size": 8, "input_noise_std": 0.0}, num_classes=10)
    batch = _batch()
    loss, logs = method.training_step(batch)
    assert set(logs) >= {"ce", "contrast"} and torch.isfinite(loss)
    assert loss.item() == pytest.approx(logs["ce"] + logs["contrast"], rel=1e-5)
    with torch.no_grad():
        logits = method.model(batch["views"][0]).logits
    torch.testing.assert_close(method.logit_queue.queue[:, :4], logits.T, rtol=1e-5, atol=1e-5)
    assert int(method.logit_queue.ptr) == 4
    assert {"logit_queue.queue", "logit_queue.ptr"} <= set(method.state_dict())
    with pytest.raises(HybridCLError, match="divisible"):
        method.on_train_start(_ctx(24))
    with pytest.raises(HybridCLError, match="positive_score"):
        HDGE(config, {"positive_score": "mean"}, num_classes=10)


# ---------------------------------------------------------------------------------------------- CLI and export
def _train(method: str, out: str, extra: list[str]) -> str:
    from hf_hybridcl.cli import main

    code = main(["train", "--method", method, "--max-steps", "3", "--output-dir", out, *tiny_train_overrides(32), *extra])
    assert code == 0
    return os.path.join(out, "model")


def test_moco_trains_from_cli_and_exports_query_encoder(tmp_path):
    from transformers import AutoModel

    from hf_hybridcl import HybridCLModel

    model_dir = _train("moco", str(tmp_path / "moco"), ["method_args.queue_size=128"])
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    assert not any("key_encoder" in k or "queue" in k for k in weights)
    model = AutoModel.from_pretrained(model_dir)
    assert isinstance(model, HybridCLModel) and model.config.method == "moco"
    out = model(torch.zeros(2, 1, 16, 16))
    torch.testing.assert_close(out.projection.norm(dim=-1), torch.ones(2))
    metrics = json.load(open(tmp_path / "moco" / "metrics.json"))
    assert 0.0 <= metrics["protocols"]["linear_probe"]["value"] <= 1.0
    log = [json.loads(line) for line in open(tmp_path / "moco" / "train_log.jsonl")]
    assert log[-1]["step"] == 3


def test_hdge_trains_from_cli_and_exports_a_classifier(tmp_path, digits):
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    from hf_hybridcl import HybridCLForImageClassification
    from hf_hybridcl.evaluate.features import pixel_tensor, processor_for

    model_dir = _train("hdge", str(tmp_path / "hdge"), ["method_args.queue_size=64"])
    assert AutoModel.from_pretrained(model_dir) is not None
    classifier = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    assert isinstance(classifier, HybridCLForImageClassification) and classifier.config.num_labels == 10
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    assert not any("queue" in k for k in weights)

    images = [digits.test.image(i) for i in range(6)]
    with torch.no_grad():
        logits = classifier(pixel_tensor(digits.test, processor_for(classifier))[:6]).logits
    predictions = logits.argmax(-1)
    assert logits.shape == (6, 10) and ((predictions >= 0) & (predictions < 10)).all()

    classify = pipeline("image-classification", model=model_dir, device="cpu")
    top = [result[0]["label"] for result in classify(images, top_k=1)]
    assert top == [classifier.config.id2label[int(p)] for p in predictions]
