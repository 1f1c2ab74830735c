"""Input-gradient loops (SGLD sampling, PGD attacks) differentiate with respect to the *input* only.

While they run, the network's parameters need no gradient: :func:`frozen_parameters` switches their
``requires_grad`` off so the forward pass does not record (or save tensors for) weight gradients, and restores
each parameter's own flag afterwards, also when the loop raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def frozen_parameters(*modules: nn.Module | None) -> Iterator[None]:
    """``requires_grad = False`` on every parameter of ``modules`` (``None`` entries are skipped) inside the block."""
    saved = {}
    for module in modules:
        if module is not None:
            for param in module.parameters():
                saved.setdefault(id(param), (param, param.requires_grad))
    try:
        for param, _ in saved.values():
            param.requires_grad_(False)
        yield
    finally:
        for param, flag in saved.values():
            param.requires_grad_(flag)
