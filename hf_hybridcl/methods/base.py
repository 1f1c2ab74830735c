"""The method contract: what every training method provides to the training loop.

A method is an ``nn.Module`` that owns the exported encoder plus everything only training needs (heads, queues,
replay buffers, decoders, discriminators, teachers). Its buffers and sub-modules are part of its ``state_dict``,
so Accelerate checkpoints and restores them with the weights. Contract:

- build from a model config, its hyper-parameters (``default_hparams`` lists every key and default) and the
  number of classes: ``__init__`` calls :meth:`build`;
- ``training_step(batch) -> (loss, logs)``; ``forward`` calls it, so the data-parallel wrapper sees the pass;
- ``export()`` returns the ``PreTrainedModel`` to save (a :class:`HybridCLModel` or classifier);
- hooks for methods that need more than "loss, backward, step": :meth:`on_train_start` (fit things on data),
  :meth:`optimization_step` (own the whole step: SAM's two passes, a discriminator's optimiser),
  :meth:`after_optimizer_step` (momentum encoders), :meth:`checkpoint_objects` (extra stateful objects),
  :meth:`write_artifacts` (sample grids, decoders) and :meth:`extra_metrics` (bits/dim, ...).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from ..configuration_hybridcl import HybridCLConfig
from ..errors import HybridCLError

Batch = dict[str, Any]  # {"views": [tensor (B, C, H, W), ...], "labels": (B,) long, "index": (B,) long}


@dataclass
class StepContext:
    """What :meth:`HybridMethod.optimization_step` gets from the loop."""

    accelerator: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    wrapped: nn.Module  # the (possibly data-parallel) wrapped method: call it to run ``forward``
    step: int
    max_grad_norm: float | None


@dataclass
class TrainContext:
    """What :meth:`HybridMethod.on_train_start` gets: the data and the run settings."""

    accelerator: Any
    splits: Any  # data.ImageSplits
    train_dataset: Any  # data.ViewDataset
    recipe: dict
    run_dir: str | None
    total_steps: int


class HybridMethod(nn.Module, metaclass=ABCMeta):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    requires_labels: ClassVar[bool] = False
    view_kind: ClassVar[str] = "two_strong"  # see data.views.VIEW_KINDS
    normalize_views: ClassVar[bool] = True  # False: views arrive in [0, 1] pixels (attacks)
    default_hparams: ClassVar[dict[str, Any]] = {}
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, model_config: HybridCLConfig, hparams: dict[str, Any] | None = None, num_classes: int = 0):
        super().__init__()
        self.model_config = model_config
        self.hparams = resolve_hparams(self.name, self.default_hparams, hparams or {})
        self.num_classes = int(num_classes)
        if self.requires_labels and self.num_classes < 2:
            raise HybridCLError(
                f"method {self.name!r} is supervised and needs labelled data with at least 2 classes; "
                f"give a data set with a label column (--label-column) or use an unsupervised method such as simclr."
            )
        self.build()

    # -- what subclasses implement (abstract: a method missing one cannot be constructed) ----------------------
    @abstractmethod
    def build(self) -> None:
        """Create the modules and buffers (``self.hparams``, ``self.model_config``, ``self.num_classes`` are set)."""

    @abstractmethod
    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch and the scalars to log."""

    @abstractmethod
    def export(self) -> PreTrainedModel:
        """The ``PreTrainedModel`` to save (it shares weights with this method)."""

    # -- hooks with defaults ---------------------------------------------------------------------------------
    def forward(self, batch: Batch, **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
        return self.training_step(batch, **kwargs)

    def on_train_start(self, ctx: TrainContext) -> None:
        """Called once before the first step (also on resume, before the checkpoint is loaded)."""

    def optimization_step(self, batch: Batch, ctx: StepContext) -> dict[str, float] | None:
        """Return ``None`` to let the loop do forward/backward/step, or do the whole step and return logs."""
        return None

    def after_optimizer_step(self, step: int) -> None:
        """Called after every optimiser step (after gradient accumulation completes)."""

    def optimizer_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters the main optimiser trains (default: all that require grad)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def checkpoint_objects(self) -> list[Any]:
        """Extra objects with ``state_dict``/``load_state_dict`` to checkpoint (e.g. an own optimiser)."""
        return []

    def write_artifacts(self, run_dir: str) -> list[str]:
        """Write method-specific files (sample grids, decoder weights) into ``run_dir``; return their paths."""
        return []

    def extra_metrics(self, splits: Any, device: torch.device) -> dict[str, dict]:
        """Method-specific evaluation (e.g. bits/dim), as ``{protocol: {"value"/"values", "settings", ...}}``."""
        return {}

    # -- helpers ---------------------------------------------------------------------------------------------
    def labels_of(self, batch: Batch) -> torch.Tensor:
        labels = batch.get("labels")
        if labels is None or (labels < 0).any():
            raise HybridCLError(
                f"method {self.name!r} needs labels but the batch has none; use a labelled data set or an "
                f"unsupervised method such as simclr."
            )
        return labels


def resolve_hparams(method: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Merge given hyper-parameters over the defaults; unknown keys are an error that lists the valid ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise HybridCLError(
            f"unknown method_args {unknown} for method {method!r}; valid keys: {sorted(defaults)}."
        )
    merged = dict(defaults)
    for key, value in given.items():
        default = defaults[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise HybridCLError(f"method_args.{key} must be true/false, got {value!r}.")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        merged[key] = value
    return merged
