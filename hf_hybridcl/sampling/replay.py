"""Persistent replay buffer of SGLD chains (METHODS.md section 1; JEM: Grathwohl et al. 2020, sec. 4 "PCD";
EBCLR: Kim & Ye 2022, sec. 4.2).

Each training step draws chain starts from random slots, replaces a fraction ``rho`` of them by fresh samples from
a proposal (an augmented data batch for EBCLR, uniform noise in [-1, 1] for JEM), runs SGLD, and writes the results
back into the same slots. Every slot carries a counter: the number of SGLD runs started from it, used by MSGLD's
noise schedule (:func:`~hf_hybridcl.sampling.sgld.msgld_noise_std`).

Slots start empty (counter ``-1``); the first draw of an empty slot fills it from the proposal with counter
``initial_count`` (EBCLR: 5 for its data-initialised buffer, so initial chains get the small noise). That is the
same as filling the whole buffer with proposal samples up front, without the start-up cost. A re-initialised slot
gets counter ``reinit_count`` (0: the chain is fresh, it gets the large noise). Write-back stores the samples and
sets the counter to the drawn count + 1.

With several processes the buffer is replicated: :meth:`ReplayBuffer.draw_shared` draws the slots of the global
batch on rank 0 and broadcasts them, each process runs the chains of its own rows, and
:meth:`ReplayBuffer.write_shared` all-gathers the results so every process writes every slot. All copies stay
identical, so the checkpoint (written from rank 0) is the state of every process.

Storage and memory (CIFAR-sized 3x32x32 images, 50,000 slots): ``fp32`` 614 MB (about 600 MB), ``fp16`` 307 MB,
``uint8`` 154 MB. Precision: ``fp32`` exact; ``fp16`` rounds to 11 significant bits (absolute error at most
``2**-12`` for |x| <= 1, ``2**-11 * |x|`` beyond, overflow above 65504); ``uint8`` clips to [-1, 1] and quantises
to 256 levels, absolute error at most ``1/255`` (half of the level spacing ``2/255``) inside [-1, 1].

``samples`` and ``counters`` are registered buffers, so the buffer is part of the owning method's ``state_dict``
and is checkpointed and restored bit-exactly. Randomness comes from the torch global RNG (checkpointed by
Accelerate) or from a ``generator`` the caller passes (EBCLR derives one per step from a checkpointed seed and step
counter, so a resumed run draws the same slots as a straight one whatever else consumed the global RNG).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import HybridCLError
from ..distributed import gather_no_grad, rank_offset, world_size

STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "uint8": torch.uint8}


@dataclass
class BufferDraw:
    """Chain starts drawn from a :class:`ReplayBuffer`.

    ``indices`` slots ``(n,)``; ``starts`` float32 ``(n, ...)``; ``counts`` the counters the chains run with (after
    re-initialisation); ``reinit`` slots replaced by the proposal; ``filled`` empty slots filled from the proposal.
    """

    indices: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor
    reinit: torch.Tensor
    filled: torch.Tensor


class ReplayBuffer(nn.Module):
    """Fixed-capacity buffer of SGLD samples with per-slot run counters (module docstring).

    Args:
        capacity: number of slots.
        sample_shape: shape of one sample, e.g. ``(3, 32, 32)``.
        storage_dtype: ``"fp32"``, ``"fp16"`` or ``"uint8"`` (precision and memory in the module docstring).
        reinit_prob: probability ``rho`` that a drawn slot is restarted from the proposal.
        initial_count: counter of a slot filled for the first time (EBCLR: 5).
        reinit_count: counter of a re-initialised slot (0).
    """

    def __init__(
        self,
        capacity: int,
        sample_shape: Sequence[int],
        storage_dtype: str = "fp32",
        reinit_prob: float = 0.05,
        initial_count: int = 0,
        reinit_count: int = 0,
    ):
        super().__init__()
        if capacity < 1:
            raise HybridCLError(f"replay buffer capacity must be at least 1, got {capacity}.")
        if storage_dtype not in STORAGE_DTYPES:
            raise HybridCLError(f"unknown replay buffer storage dtype {storage_dtype!r}; use one of {sorted(STORAGE_DTYPES)}.")
        if not 0.0 <= reinit_prob <= 1.0:
            raise HybridCLError(f"replay buffer reinit_prob must be in [0, 1], got {reinit_prob}.")
        if initial_count < 0 or reinit_count < 0:
            raise HybridCLError("replay buffer initial_count and reinit_count must be >= 0.")
        self.capacity = int(capacity)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.storage_dtype = storage_dtype
        self.reinit_prob = float(reinit_prob)
        self.initial_count = int(initial_count)
        self.reinit_count = int(reinit_count)
        self.register_buffer("samples", torch.zeros(self.capacity, *self.sample_shape, dtype=STORAGE_DTYPES[storage_dtype]))
        self.register_buffer("counters", torch.full((self.capacity,), -1, dtype=torch.long))

    # -- storage ---------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float samples -> storage dtype (uint8: clip to [-1, 1], 256 levels)."""
        if self.storage_dtype == "uint8":
            x = torch.nan_to_num(x.float(), nan=0.0).clamp(-1.0, 1.0)
            return ((x + 1.0) * 127.5).round().to(torch.uint8)
        return x.to(STORAGE_DTYPES[self.storage_dtype])

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        """Storage dtype -> float32 samples."""
        if self.storage_dtype == "uint8":
            return stored.float() / 127.5 - 1.0
        return stored.float()

    @property
    def num_filled(self) -> int:
        return int((self.counters >= 0).sum().item())

    # -- draw / write ----------------------------------------------------------------------------------------
    def uniform_proposal(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples of uniform noise in [-1, 1] (JEM's proposal)."""
        return torch.rand(n, *self.sample_shape, device=self.samples.device, generator=generator) * 2.0 - 1.0

    def draw_indices(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` distinct random slots and the re-initialisation mask (each slot with probability ``rho``)."""
        if n > self.capacity:
            raise HybridCLError(
                f"cannot draw {n} chains from a replay buffer of {self.capacity} slots; raise the buffer size or lower the batch."
            )
        device = self.samples.device
        indices = torch.randperm(self.capacity, device=device, generator=generator)[:n]
        reinit = torch.rand(n, device=device, generator=generator) < self.reinit_prob
        return indices, reinit

    def draw(
        self,
        n: int,
        proposal: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        reinit: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> BufferDraw:
        """Draw ``n`` chain starts (module docstring). ``proposal`` ``(n, ...)`` supplies the fresh samples (e.g. the
        current batch's augmented views); ``None`` uses uniform noise in [-1, 1]. ``indices``/``reinit`` may be
        given (e.g. broadcast from rank 0 so all processes use the same slots); otherwise they are drawn here with
        ``generator`` (default: the torch global RNG)."""
        if indices is None or reinit is None:
            indices, reinit = self.draw_indices(n, generator)
        if indices.shape != (n,) or reinit.shape != (n,):
            raise HybridCLError(f"indices and reinit must have shape ({n},).")
        if proposal is None:
            proposal = self.uniform_proposal(n, generator)
        if tuple(proposal.shape) != (n, *self.sample_shape):
            raise HybridCLError(
                f"replay buffer proposal must have shape {(n, *self.sample_shape)}, got {tuple(proposal.shape)}; "
                f"the buffer's sample shape must match the model input."
            )
        stored = self.decode(self.samples[indices])
        counts = self.counters[indices].clone()
        filled = counts < 0
        reinit = reinit.to(torch.bool) & ~filled
        fresh = (filled | reinit).view(n, *([1] * len(self.sample_shape)))
        starts = torch.where(fresh, proposal.to(stored.device, torch.float32), stored)
        counts = torch.where(filled, torch.full_like(counts, self.initial_count), counts)
        counts = torch.where(reinit, torch.full_like(counts, self.reinit_count), counts)
        return BufferDraw(indices=indices, starts=starts, counts=counts, reinit=reinit, filled=filled)

    @torch.no_grad()
    def write(self, draw: BufferDraw, samples: torch.Tensor) -> None:
        """Store the SGLD outputs in the drawn slots; their counters become the drawn count + 1."""
        self.samples[draw.indices] = self.encode(samples.detach())
        self.counters[draw.indices] = draw.counts + 1

    @torch.no_grad()
    def reinitialize(self, indices: torch.Tensor, proposal: torch.Tensor) -> None:
        """Restart slots from proposal samples with counter ``reinit_count`` (divergence guard)."""
        if indices.numel() == 0:
            return
        self.samples[indices] = self.encode(proposal.detach())
        self.counters[indices] = self.reinit_count

    @torch.no_grad()
    def reinitialize_where(
        self, draw: BufferDraw, mask: torch.Tensor, proposal: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> int:
        """Restart the drawn slots where ``mask`` is true from the matching ``proposal`` rows (uniform noise if
        ``None``); returns how many slots were restarted."""
        count = int(mask.sum().item())
        if count:
            fresh = proposal[mask] if proposal is not None else self.uniform_proposal(count, generator)
            self.reinitialize(draw.indices[mask], fresh)
        return count

    # -- several processes -----------------------------------------------------------------------------------
    def draw_shared(
        self, n_local: int, proposal_local: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[BufferDraw, slice]:
        """Draw the chain starts of the global batch (``n_local`` rows per process) identically on every process.

        Returns the global draw and the slice of its rows this process runs. ``proposal_local`` ``(n_local, ...)``
        (``None``: uniform noise) is gathered so every process sees the proposal of every row."""
        world = world_size()
        n = n_local * world
        indices, reinit = self.draw_indices(n, generator)
        if world > 1:
            import torch.distributed as dist

            flag = reinit.to(torch.uint8)
            dist.broadcast(indices, src=0)
            dist.broadcast(flag, src=0)
            reinit = flag.bool()
        if proposal_local is None:
            proposal_local = self.uniform_proposal(n_local, generator)
        proposal = gather_no_grad(proposal_local.detach().float().contiguous())
        draw = self.draw(n, proposal, indices, reinit)
        offset = rank_offset(n_local)
        return draw, slice(offset, offset + n_local)

    @torch.no_grad()
    def write_shared(
        self,
        draw: BufferDraw,
        samples_local: torch.Tensor,
        diverged_local: torch.Tensor | None = None,
        proposal_local: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> int:
        """Write the chains of all processes back; restart the slots whose chains diverged (``diverged_local``)
        from the proposal (``None``: uniform noise). Returns the global number of restarted slots."""
        samples = gather_no_grad(samples_local.detach().float().contiguous())
        self.write(draw, samples)
        if diverged_local is None:
            return 0
        diverged = gather_no_grad(diverged_local.to(torch.uint8).contiguous()).bool()
        proposal = gather_no_grad(proposal_local.detach().float().contiguous()) if proposal_local is not None else None
        if proposal is None and diverged.any():  # same decision on every process: ``diverged`` is gathered
            proposal = gather_no_grad(self.uniform_proposal(samples_local.shape[0], generator))
        return self.reinitialize_where(draw, diverged, proposal)

    @torch.no_grad()
    def fill(self, samples: torch.Tensor, count: int | None = None) -> None:
        """Fill the first ``len(samples)`` slots explicitly (counter ``initial_count`` unless given)."""
        n = samples.shape[0]
        if n > self.capacity:
            raise HybridCLError(f"cannot fill {n} samples into a replay buffer of {self.capacity} slots.")
        self.samples[:n] = self.encode(samples)
        self.counters[:n] = self.initial_count if count is None else int(count)

    def extra_repr(self) -> str:
        return (
            f"capacity={self.capacity}, sample_shape={self.sample_shape}, storage_dtype={self.storage_dtype!r}, "
            f"reinit_prob={self.reinit_prob}, initial_count={self.initial_count}, reinit_count={self.reinit_count}"
        )


__all__ = ["BufferDraw", "ReplayBuffer", "STORAGE_DTYPES"]
