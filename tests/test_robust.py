"""Issue 6: robust CL (Tran et al.): PGD attacks, (A)SAM, dual BN, the discriminator and the robustcl method."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from hf_hybridcl import HybridCLConfig
from hf_hybridcl.cli import main as cli_main
from hf_hybridcl.errors import HybridCLError
from hf_hybridcl.methods.robustcl import RobustCL
from hf_hybridcl.robust import (
    SAM,
    DualBatchNorm2d,
    ProjectionDiscriminator,
    adversarial_bn,
    contrastive_attack,
    convert_to_dual_bn,
    convert_to_plain_bn,
    cross_entropy_attack,
    divergence_loss,
    frozen_bn_stats,
    l2_ball_ok,
    linf_ball_ok,
    pgd,
    store_gradients,
)
from tests.conftest import tiny_train_overrides


class TinyNet(nn.Module):
    """Conv + BN + dropout classifier on [0, 1] pixels (has train/eval-dependent layers)."""

    def __init__(self, channels: int = 1, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(self.drop(F.relu(self.bn(self.conv(x))).flatten(1)))


@pytest.fixture(scope="module")
def digit_pixels():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    return x, torch.tensor(data.target)


# ------------------------------------------------------------------------------------------------- attacks
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_stays_in_the_ball_and_the_pixel_range(norm, eps, digit_pixels):
    torch.manual_seed(0)
    x, y = digit_pixels[0][:64], digit_pixels[1][:64]
    model = TinyNet()
    x_adv = cross_entropy_attack(model, x, y, eps=eps, step_size=eps / 2, steps=5, norm=norm)
    inside = linf_ball_ok if norm == "linf" else l2_ball_ok
    assert inside(x, x_adv, eps)
    assert not torch.equal(x_adv, x)  # it moved
    assert (x_adv - x).abs().max() > 0.5 * (eps if norm == "linf" else eps / 8)
    # a step far bigger than eps must still be projected back
    big = pgd(lambda z: z.sum(), x, eps, step_size=10.0, steps=3, norm=norm)
    assert inside(x, big, eps)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_with_zero_eps_returns_the_input(norm, digit_pixels):
    x, y = digit_pixels[0][:16], digit_pixels[1][:16]
    x_adv = cross_entropy_attack(TinyNet(), x, y, eps=0.0, step_size=0.1, steps=3, norm=norm)
    assert torch.equal(x_adv, x)


def test_attack_success_rises_with_eps(digit_pixels):
    torch.manual_seed(0)
    x, y = digit_pixels
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # logistic regression on pixels
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    errors = []
    for eps in (0.0, 2 / 255, 8 / 255, 32 / 255, 64 / 255):
        x_adv = cross_entropy_attack(model, x, y, eps=eps, step_size=eps / 4, steps=10)
        with torch.no_grad():
            errors.append(float((model(x_adv).argmax(1) != y).float().mean()))
    assert all(b >= a - 0.01 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] > errors[0] + 0.3, errors


def test_attacks_restore_modes_and_leave_gradients_alone(digit_pixels):
    torch.manual_seed(0)
    x, y = digit_pixels[0][:16], digit_pixels[1][:16]
    model = TinyNet().train()
    model.drop.eval()  # a mixed-mode model: each sub-module's flag must come back as it was
    model.fc.weight.grad = torch.full_like(model.fc.weight, 3.0)
    before = {n: m.training for n, m in model.named_modules()}
    x_adv = cross_entropy_attack(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3)
    assert {n: m.training for n, m in model.named_modules()} == before
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 3.0))
    assert model.conv.weight.grad is None and model.bn.weight.grad is None
    assert not x_adv.requires_grad and x_adv.grad_fn is None

    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8))
    projector = lambda v: F.normalize(encoder(v), dim=-1)  # noqa: E731
    disc = ProjectionDiscriminator(8).train()
    wrapper = nn.Module()
    wrapper.encoder = encoder
    wrapper.forward = projector
    running = encoder[2].running_mean.clone()
    z_pos = F.normalize(torch.randn(16, 8), dim=-1)
    x_adv = contrastive_attack(wrapper, x, z_pos, steps=3, discriminator=disc, disc_weight=0.1)
    assert wrapper.training and encoder.training and disc.training
    assert torch.equal(encoder[2].running_mean, running)  # eval mode during the attack: BN statistics unchanged
    assert all(p.grad is None for p in [*encoder.parameters(), *disc.parameters()])
    assert linf_ball_ok(x, x_adv, 8 / 255) and not x_adv.requires_grad


def test_attacks_reject_normalised_inputs():
    with pytest.raises(HybridCLError, match=r"\[0, 1\] pixels"):
        pgd(lambda z: z.sum(), torch.full((1, 1, 4, 4), -1.0), 0.1, 0.01, 1)


# ----------------------------------------------------------------------------------------------------- SAM
def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_with_rho_zero_is_the_base_step(adaptive, digit_pixels):
    torch.manual_seed(0)
    x, y = digit_pixels[0][:32], digit_pixels[1][:32]
    ref = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    net = copy.deepcopy(ref)
    base_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sam = SAM(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4), rho=0.0, adaptive=adaptive)
    for _ in range(3):
        base_ref.zero_grad()
        _loss(ref, x, y).backward()
        base_ref.step()
        _loss(net, x, y).backward()
        sam.first_step()
        _loss(net, x, y).backward()
        sam.second_step()
    for a, b in zip(ref.parameters(), net.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_perturbation_and_extra_gradient_injection_sum_correctly(adaptive, digit_pixels):
    torch.manual_seed(0)
    x, y = digit_pixels[0][:32], digit_pixels[1][:32]
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    w0 = [p.detach().clone() for p in net.parameters()]
    rho = 0.5
    sam = SAM(torch.optim.SGD(net.parameters(), lr=1.0), rho=rho, adaptive=adaptive)
    # the "other" gradient at w (as the method stores it)
    (2.0 * net(x).pow(2).mean()).backward()
    extra = store_gradients(net.parameters())
    other = [p.grad.clone() for p in net.parameters()]
    sam.zero_grad()
    _loss(net, x, y).backward()
    g = [p.grad.clone() for p in net.parameters()]
    t = [w.abs() if adaptive else torch.ones_like(w) for w in w0]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    expected_e = [rho * ti**2 * gi / norm for ti, gi in zip(t, g)]
    sam.first_step()
    for p, w, e in zip(net.parameters(), w0, expected_e):
        assert torch.allclose(p, w + e, atol=1e-6)
    _loss(net, x, y).backward()
    g_perturbed = [p.grad.clone() for p in net.parameters()]
    sam.second_step(extra)
    for p, w, gp, go in zip(net.parameters(), w0, g_perturbed, other):
        assert torch.allclose(p, w - (gp + go), atol=1e-6)  # SGD lr 1: w - (grad at w+e + stored grad at w)


def test_frozen_bn_stats_restores_running_statistics():
    bn = nn.BatchNorm2d(3).train()
    bn(torch.randn(8, 3, 4, 4))
    saved = {k: v.clone() for k, v in bn.state_dict().items()}
    with frozen_bn_stats(bn):
        out = bn(torch.randn(8, 3, 4, 4) * 5 + 2)
    assert out.std() < 2  # still normalised with batch statistics
    for k, v in bn.state_dict().items():
        assert torch.equal(v, saved[k]), k


# -------------------------------------------------------------------------------------------------- dual BN
def test_dual_bn_keeps_separate_statistics_and_the_context_selects_the_branch():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    assert convert_to_dual_bn(net) == 2
    dual = [m for m in net.modules() if isinstance(m, DualBatchNorm2d)]
    clean_x, adv_x = torch.randn(16, 1, 6, 6), torch.randn(16, 1, 6, 6) * 4 + 3
    net(clean_x)
    assert torch.count_nonzero(dual[0].adversarial.running_mean) == 0  # untouched by clean data
    with adversarial_bn(net):
        assert all(m.branch == "adversarial" for m in dual)
        net(adv_x)
    assert all(m.branch == "clean" for m in dual)
    clean_mean, adv_mean = dual[0].clean.running_mean.clone(), dual[0].adversarial.running_mean.clone()
    assert not torch.allclose(clean_mean, adv_mean)
    net(clean_x)
    assert torch.equal(dual[0].adversarial.running_mean, adv_mean)  # clean pass leaves the adversarial stats
    with torch.no_grad():
        dual[0].adversarial.weight.fill_(2.0)
    plain = copy.deepcopy(net)
    assert convert_to_plain_bn(plain, "adversarial") == 2
    assert type(plain[1]) is nn.BatchNorm2d and torch.equal(plain[1].running_mean, adv_mean)
    assert torch.equal(plain[1].weight, torch.full((4,), 2.0))
    assert convert_to_dual_bn(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))) == 0  # ViT-style: nothing to do


# --------------------------------------------------------------------------------------------- discriminator
def test_discriminator_gradient_pushes_the_encoder_to_raise_l_d(tiny_vit_config):
    torch.manual_seed(0)
    method = RobustCL(tiny_vit_config, {"benign_weight": 0.0, "sam": "none", "disc_weight": 0.5, "attack_steps": 2})
    with torch.no_grad():  # a discriminator that already separates a bit
        method.discriminator.net[0].weight.normal_(0, 2.0)
    p, q = torch.rand(16, 1, 16, 16), torch.rand(16, 1, 16, 16)
    batch = {"views": [p, q], "labels": torch.zeros(16, dtype=torch.long), "index": torch.arange(16)}
    adv = method.generate_adversarial(batch)
    params = [prm for _, prm in method.optimizer_parameters()]

    def l_d() -> torch.Tensor:
        return divergence_loss(method.discriminator, method.project(q), method.project(adv, "adversarial"))

    def l_adv() -> torch.Tensor:
        from hf_hybridcl.losses import global_nt_xent

        return global_nt_xent(method.project(p), method.project(adv, "adversarial"), 0.5)

    total, logs = method.training_step(batch, phase="adversarial", adv=adv)
    assert "l_div" in logs
    g_total = torch.autograd.grad(total, params, allow_unused=True)
    g_adv = torch.autograd.grad(l_adv(), params, allow_unused=True)
    g_div = torch.autograd.grad(l_d(), params, allow_unused=True)
    zero = lambda g, prm: g if g is not None else torch.zeros_like(prm)  # noqa: E731
    for gt, ga, gd, prm in zip(g_total, g_adv, g_div, params):
        assert torch.allclose(zero(gt, prm) - zero(ga, prm), -0.5 * zero(gd, prm), atol=1e-5)
    # descending the encoder objective's divergence part (-w_d * L_D) increases L_D
    before = l_d().item()
    with torch.no_grad():
        for gt, ga, prm in zip(g_total, g_adv, params):
            prm -= 0.05 * (zero(gt, prm) - zero(ga, prm))
    assert l_d().item() > before


def test_robustcl_rejects_bad_arguments(tiny_vit_config):
    with pytest.raises(HybridCLError, match="sam"):
        RobustCL(tiny_vit_config, {"sam": "adam"})
    with pytest.raises(HybridCLError, match="export_bn_branch"):
        RobustCL(tiny_vit_config, {"export_bn_branch": "both"})
    with pytest.raises(HybridCLError, match="disc_hidden"):
        RobustCL(tiny_vit_config, {"disc_hidden": 2})


# ---------------------------------------------------------------------------------------------- end to end
ARMS = {
    "adv_only": ["method_args.benign_weight=0", "method_args.disc_weight=0"],
    "adv_benign_sam": ["method_args.disc_weight=0"],
    "adv_disc": ["method_args.benign_weight=0", "method_args.disc_hidden=1"],
    "all_three": ["method_args.robust_eval=slf"],
}


@pytest.mark.parametrize("arm", list(ARMS))
def test_robustcl_arms_train_from_the_cli_and_export(arm, tmp_path, monkeypatch):
    from hf_hybridcl.evaluate import robust as robust_eval

    for key, value in {"linf_steps": 2, "l2_steps": 2, "max_test_images": 48, "slf_epochs": 5}.items():
        monkeypatch.setitem(robust_eval.DEFAULT_ROBUST_SETTINGS, key, value)  # keep the end-of-training eval small
    out = tmp_path / arm
    args = ["train", "--method", "robustcl", "--max-steps", "2", "--output-dir", str(out), *tiny_train_overrides(32),
            "train.log_every=1", "method_args.attack_steps=2", "method_args.robust_eval=none", *ARMS[arm]]
    assert cli_main(args) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(r["loss"]) and not r["skipped"] for r in log)
    assert ("l_ben" in log[0]) == (arm in ("adv_benign_sam", "all_three"))
    assert ("d_loss" in log[0]) == (arm in ("adv_disc", "all_three"))
    assert ("l_ben_perturbed" in log[0]) == (arm in ("adv_benign_sam", "all_three"))  # the SAM second pass ran
    model = AutoModel.from_pretrained(out / "model")
    assert model.config.method == "robustcl"
    assert model(torch.rand(2, 1, 16, 16)).projection.shape == (2, 16)
    checkpoint = out / "checkpoints" / "checkpoint_2"
    extra = [f for f in os.listdir(checkpoint) if f.startswith("custom_checkpoint")]
    assert len(extra) == (2 if arm in ("adv_disc", "all_three") else 1)  # scheduler (+ discriminator optimiser)
    metrics = json.loads((out / "metrics.json").read_text())["protocols"]
    if arm == "all_three":
        for key in ("slf_clean", "slf_pgd2_linf", "slf_pgd2_l2"):
            assert 0.0 <= metrics[key]["value"] <= 1.0, key
        assert metrics["slf_pgd2_linf"]["settings"]["steps"] == 2 and metrics["slf_clean"]["settings"]["num_test"] == 48
        aa = metrics["slf_autoattack"]
        assert aa["value"] is not None or "pip install 'hf-hybridcl[robust]'" in aa["skipped"]


def test_cnn_with_dual_bn_trains_and_exports_the_chosen_branch(tmp_path):
    out = tmp_path / "cnn"
    args = ["train", "--method", "robustcl", "--max-steps", "1", "--output-dir", str(out),
            "--backbone", "resnet10t", "model.backbone_kwargs=null", "model.cifar_stem=false", "train.batch_size=16",
            "model.proj_hidden_dim=32", "model.proj_output_dim=16", "train.log_with=none", "eval.linear_epochs=2",
            "eval.random_init_baseline=false", "method_args.attack_steps=1", "method_args.robust_eval=none",
            "optim.name=sgd", "optim.lr=0.05", "optim.weight_decay=0.0001"]
    assert cli_main(args) == 0
    model = AutoModel.from_pretrained(out / "model")
    assert any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert "adversarial" in (out / "robustcl_export.md").read_text()
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 1, 16, 16)).pooler_output).all()


def test_dual_bn_method_exports_the_requested_branch():
    config = HybridCLConfig(backbone="resnet10t", image_size=16, num_channels=1, cifar_stem=False,
                            proj_hidden_dim=16, proj_output_dim=8)
    for branch in ("clean", "adversarial"):
        method = RobustCL(config, {"export_bn_branch": branch})
        assert method.num_dual_bn > 0
        first = next(m for m in method.model.modules() if isinstance(m, DualBatchNorm2d))
        with torch.no_grad():
            first.adversarial.running_mean.fill_(1.0)
            first.clean.running_mean.fill_(-1.0)
        exported = method.export()
        assert not any(isinstance(m, DualBatchNorm2d) for m in exported.modules())
        assert any(isinstance(m, DualBatchNorm2d) for m in method.model.modules())  # training model untouched
        means = [m.running_mean for m in exported.modules() if type(m) is nn.BatchNorm2d]
        assert torch.all(means[0] == (1.0 if branch == "adversarial" else -1.0))
        assert set(exported.state_dict()) == set(type(exported)(config).state_dict())  # stock HybridCLModel keys


def test_robust_evaluation_reports_slf_and_alf(digits, tiny_vit_config):
    from hf_hybridcl.data.datasets import ImageList, ImageSplits
    from hf_hybridcl.evaluate.robust import robust_evaluation
    from hf_hybridcl.modeling_hybridcl import HybridCLModel

    def head(split, n):
        return ImageList(list(split.images[:n]), split.labels[:n], split.class_names)

    digits = ImageSplits(head(digits.train, 300), head(digits.test, 64), digits.name, digits.class_names)
    torch.manual_seed(0)
    model = HybridCLModel(tiny_vit_config).train()
    settings = {"probes": ["slf", "alf"], "slf_epochs": 20, "alf_epochs": 1, "alf_steps": 2, "linf_steps": 3,
                "l2_steps": 3, "max_test_images": 64, "alf_batch_size": 256}
    results = robust_evaluation(model, digits, settings, "cpu")
    assert model.training  # mode restored
    for probe in ("slf", "alf"):
        clean, linf = results[f"{probe}_clean"]["value"], results[f"{probe}_pgd3_linf"]["value"]
        assert 0.15 < clean <= 1.0  # a random ViT's features beat chance (0.1) on digits
        assert linf <= clean + 1e-9 and results[f"{probe}_pgd3_l2"]["value"] <= clean + 1e-9
        assert results[f"{probe}_pgd3_linf"]["settings"]["eps"] == pytest.approx(8 / 255)
        entry = results[f"{probe}_autoattack"]
        assert entry["value"] is not None or "pip install 'hf-hybridcl[robust]'" in entry["skipped"]
    assert "train_adversarial_accuracy" in results["alf_clean"]["values"]
    with pytest.raises(HybridCLError, match="unknown robust evaluation settings"):
        robust_evaluation(model, digits, {"pgd_steps": 3})


def test_robustcl_resume_is_exact(tmp_path, monkeypatch):
    """4 straight steps vs 2 steps + --resume to 4: identical weights, discriminator and its optimiser state
    (PGD random starts, SAM and the discriminator's own optimiser all continue as if uninterrupted)."""
    from safetensors.torch import load_file

    from hf_hybridcl.evaluate import robust as robust_eval

    monkeypatch.setitem(robust_eval.DEFAULT_ROBUST_SETTINGS, "max_test_images", 16)
    common = [*tiny_train_overrides(16), "method_args.attack_steps=2", "method_args.robust_eval=none",
              "method_args.disc_hidden=1", "train.save_every=2", "eval.protocols=[knn]"]

    def train(out, steps, *extra):
        return cli_main(["train", "--method", "robustcl", "--max-steps", str(steps), "--output-dir", str(out), *extra, *common])

    assert train(tmp_path / "straight", 4) == 0
    assert train(tmp_path / "resumed", 2) == 0
    assert train(tmp_path / "resumed", 4, "--resume") == 0
    a_dir, b_dir = (tmp_path / run / "checkpoints" / "checkpoint_4" for run in ("straight", "resumed"))
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("discriminator.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    extras = sorted(f for f in os.listdir(a_dir) if f.startswith("custom_checkpoint"))
    assert len(extras) == 2  # scheduler + discriminator optimiser
    for name in extras:
        sa, sb = torch.load(a_dir / name, weights_only=False), torch.load(b_dir / name, weights_only=False)
        assert repr(sa) == repr(sb), name
