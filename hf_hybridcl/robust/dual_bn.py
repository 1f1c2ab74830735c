"""Dual BatchNorm for CNN backbones (Xie et al. 2020 "AdvProp"; used by RoCL/ACL and Tran et al., METHODS.md 6d).

Clean and adversarial images have different activation statistics, so adversarial contrastive learning keeps two
BatchNorm branches: index 0 ("clean") for benign views and 1 ("adversarial") for attacked views, each with its
own affine parameters and running statistics. :func:`convert_to_dual_bn` swaps every ``nn.BatchNorm2d`` of a
(timm) backbone for a :class:`DualBatchNorm2d`; the branch is chosen with a context manager::

    convert_to_dual_bn(model.backbone)
    with adversarial_bn(model):
        z_adv = model(x_adv).projection      # adversarial branch
    z = model(x).projection                   # clean branch (default)

Vision transformers need nothing: LayerNorm normalises each sample on its own and keeps no running statistics,
so clean and adversarial inputs cannot contaminate each other's statistics. :func:`convert_to_dual_bn` returns
0 for them and the context managers are no-ops.

Export: :func:`convert_to_plain_bn` turns each dual layer back into a stock ``nn.BatchNorm2d`` holding one
branch, so the exported folder loads with the unmodified ``HybridCLModel``. The robust linear probe of the paper
uses the adversarial branch; the clean branch gives the better clean accuracy (6f reports both).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Literal

from torch import nn

from ..errors import HybridCLError

Branch = Literal["clean", "adversarial"]
BRANCHES = ("clean", "adversarial")


class DualBatchNorm2d(nn.Module):
    """Two ``BatchNorm2d`` branches with separate parameters and running statistics; ``branch`` selects one."""

    def __init__(self, source: nn.BatchNorm2d):
        super().__init__()
        self.clean = source
        self.adversarial = copy.deepcopy(source)
        self.branch: Branch = "clean"

    def forward(self, x):
        return self.adversarial(x) if self.branch == "adversarial" else self.clean(x)

    def extra_repr(self) -> str:
        return f"branch={self.branch}"


def _check_branch(branch: str) -> None:
    if branch not in BRANCHES:
        raise HybridCLError(f"unknown BatchNorm branch {branch!r}; use 'clean' or 'adversarial' (method_args.export_bn_branch).")


def convert_to_dual_bn(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by a :class:`DualBatchNorm2d` whose branches
    both start as copies of it. Returns the number of replaced layers (0 for ViTs and other BN-free models)."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, DualBatchNorm2d):
            continue
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, DualBatchNorm2d(child))
            count += 1
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise HybridCLError(
                f"dual BatchNorm supports plain nn.BatchNorm2d layers, but {name!r} is {type(child).__name__} "
                f"(a fused norm+activation layer); use a ResNet-family backbone or set method_args.dual_bn=false."
            )
        else:
            count += convert_to_dual_bn(child)
    return count


def convert_to_plain_bn(module: nn.Module, branch: Branch = "adversarial") -> int:
    """Replace every :class:`DualBatchNorm2d` inside ``module`` (in place) by its ``branch`` BatchNorm2d."""
    _check_branch(branch)
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, DualBatchNorm2d):
            setattr(module, name, getattr(child, branch))
            count += 1
        else:
            count += convert_to_plain_bn(child, branch)
    return count


def dual_bn_layers(module: nn.Module) -> list[DualBatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, DualBatchNorm2d)]


def branch_norms(module: nn.Module, branch: Branch) -> list[nn.BatchNorm2d]:
    """The BatchNorm2d modules of one branch (e.g. to freeze only the clean running statistics)."""
    _check_branch(branch)
    return [getattr(m, branch) for m in dual_bn_layers(module)]


@contextlib.contextmanager
def bn_branch(module: nn.Module, branch: Branch) -> Iterator[None]:
    """Route every dual BatchNorm inside ``module`` through ``branch``; the previous routing is restored on exit."""
    _check_branch(branch)
    layers = dual_bn_layers(module)
    saved = [m.branch for m in layers]
    try:
        for m in layers:
            m.branch = branch
        yield
    finally:
        for m, previous in zip(layers, saved):
            m.branch = previous


def adversarial_bn(module: nn.Module) -> contextlib.AbstractContextManager:
    """``with adversarial_bn(model): ...`` runs the adversarial branch (a no-op for models without dual BN)."""
    return bn_branch(module, "adversarial")


__all__ = [
    "BRANCHES", "Branch", "DualBatchNorm2d", "adversarial_bn", "bn_branch", "branch_norms", "convert_to_dual_bn",
    "convert_to_plain_bn", "dual_bn_layers",
]
