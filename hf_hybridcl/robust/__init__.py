"""Adversarial robustness building blocks (Tran et al., METHODS.md section 6): PGD attacks in [0, 1] pixel space,
(A)SAM with extra-gradient injection, the benign/adversarial projection discriminator and dual BatchNorm."""

from .attacks import (
    Normalize,
    PixelModel,
    contrastive_attack,
    cross_entropy_attack,
    eval_mode,
    l2_ball_ok,
    linf_ball_ok,
    pgd,
)
from .discriminator import ProjectionDiscriminator, divergence_loss, fake_bce
from .dual_bn import (
    DualBatchNorm2d,
    adversarial_bn,
    bn_branch,
    branch_norms,
    convert_to_dual_bn,
    convert_to_plain_bn,
    dual_bn_layers,
)
from .sam import SAM, frozen_bn_stats, store_gradients

__all__ = [
    "SAM",
    "DualBatchNorm2d",
    "Normalize",
    "PixelModel",
    "ProjectionDiscriminator",
    "adversarial_bn",
    "bn_branch",
    "branch_norms",
    "contrastive_attack",
    "convert_to_dual_bn",
    "convert_to_plain_bn",
    "cross_entropy_attack",
    "divergence_loss",
    "dual_bn_layers",
    "eval_mode",
    "fake_bce",
    "frozen_bn_stats",
    "l2_ball_ok",
    "linf_ball_ok",
    "pgd",
    "store_gradients",
]
