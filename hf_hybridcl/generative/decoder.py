"""The GCRL pixel decoder (METHODS.md 3j): a small causal transformer over pixel tokens that cross-attends to
encoder tokens, plus saving/loading it (with its quantiser) beside a run.

Input at position ``i`` is the previous token (a start-of-sequence token at ``i = 0``), so ``logits[:, i]``
predicts ``tokens[:, i]`` from ``tokens[:, :i]`` and the encoder memory only (teacher forcing, iGPT-style).
Sampling caches keys and values (:meth:`PixelDecoder.step`). The memory always starts with one learned "null" token, so the decoder also runs with no encoder tokens at all
(``gen_mask_ratio = 1``): then its output cannot depend on the image through the encoder and it is an
unconditional autoregressive model of p(x).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HybridCLError
from .quantize import PixelQuantizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class DecoderConfig:
    """Sizes of :class:`PixelDecoder`. ``memory_dim`` is the encoder token width it cross-attends to."""

    vocab_size: int
    seq_len: int
    memory_dim: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise HybridCLError(
                f"decoder width {self.width} must be divisible by its {self.heads} heads (method_args.decoder_width / decoder_heads)."
            )
        if min(self.vocab_size, self.seq_len, self.memory_dim, self.width, self.depth, self.heads) < 1:
            raise HybridCLError(f"decoder sizes must be positive, got {asdict(self)}.")


class _Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` (causal self-attention or cross-attention)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(source).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
        q = self._split(self.q(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=is_causal)
        return self.out(y.transpose(1, 2).reshape(x.shape))


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the memory, GELU MLP (each with a residual)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = _Attention(width, heads, dropout)
        self.cross_attn = _Attention(width, heads, dropout)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``cache`` (sampling): holds this block's past keys/values and the memory's; ``x`` is then the new token(s)."""
        h = self.norm_self(x)
        k, v = self.self_attn.keys_values(h)
        if cache is None:
            mk, mv = self.cross_attn.keys_values(memory)
            causal = True
        else:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            if "mk" not in cache:
                cache["mk"], cache["mv"] = self.cross_attn.keys_values(memory)
            cache["k"], cache["v"] = k, v
            mk, mv = cache["mk"], cache["mv"]
            causal = x.shape[1] > 1  # one new token may attend to every cached position
            if causal and k.shape[2] != x.shape[1]:
                raise HybridCLError("a cached decoder step takes one token at a time after the first call.")
        x = x + self.drop(self.self_attn(h, k, v, is_causal=causal))
        h = self.norm_cross(x)
        x = x + self.drop(self.cross_attn(h, mk, mv, is_causal=False))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class PixelDecoder(nn.Module):
    """Token + position embeddings, ``depth`` pre-norm :class:`DecoderBlock` s (causal self-attention,
    cross-attention to the memory, MLP), a final norm and a next-token head. Own blocks rather than
    ``nn.TransformerDecoderLayer`` so sampling can cache keys/values (one token per step instead of the prefix)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.sos_index = config.vocab_size  # one extra embedding row for the start-of-sequence token
        self.token_embed = nn.Embedding(config.vocab_size + 1, config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.seq_len, config.width))
        self.memory_proj = nn.Linear(config.memory_dim, config.width)
        self.null_memory = nn.Parameter(torch.zeros(1, 1, config.width))
        self.blocks = nn.ModuleList(
            DecoderBlock(config.width, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.null_memory, std=0.02)
        nn.init.trunc_normal_(self.token_embed.weight, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Embeddings are excluded from weight decay (the training loop reads this, as for timm's ViT)."""
        return {"pos_embed", "null_memory", "token_embed.weight"}

    def build_memory(self, encoder_tokens: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """``[null token; projected encoder tokens]`` of shape ``(B, 1 + M, width)``."""
        null = self.null_memory.expand(batch_size, -1, -1)
        if encoder_tokens is None or encoder_tokens.shape[1] == 0:
            return null
        if encoder_tokens.shape[0] != batch_size or encoder_tokens.shape[-1] != self.config.memory_dim:
            raise HybridCLError(
                f"encoder tokens must have shape ({batch_size}, M, {self.config.memory_dim}), got {tuple(encoder_tokens.shape)}."
            )
        return torch.cat([null, self.memory_proj(encoder_tokens)], dim=1)

    def forward(self, tokens: torch.Tensor, encoder_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, vocab)``: ``logits[:, i]`` predicts ``tokens[:, i]`` from ``tokens[:, :i]``.

        ``tokens``: ``(B, T)`` with ``T <= seq_len``; ``encoder_tokens``: ``(B, M, memory_dim)`` or ``None``."""
        if tokens.ndim != 2 or tokens.shape[1] > self.config.seq_len or tokens.shape[1] < 1:
            raise HybridCLError(f"decoder tokens must be (B, T) with 1 <= T <= {self.config.seq_len}, got {tuple(tokens.shape)}.")
        b, t = tokens.shape
        sos = torch.full((b, 1), self.sos_index, dtype=torch.long, device=tokens.device)
        inputs = torch.cat([sos, tokens[:, :-1].long()], dim=1)
        x = self.token_embed(inputs) + self.pos_embed[:, :t]
        memory = self.build_memory(encoder_tokens, b).to(x.dtype)
        for block in self.blocks:
            x = block(x, memory)
        return self.head(self.norm(x))

    def step(self, previous: torch.Tensor | None, position: int, memory: torch.Tensor, caches: list[dict]) -> torch.Tensor:
        """One cached sampling step: logits ``(B, vocab)`` for ``position`` given the token at ``position - 1``
        (``previous``; ``None`` at position 0 means the start token). ``memory`` comes from :meth:`build_memory`;
        ``caches`` holds one dict per block, empty before position 0."""
        b = memory.shape[0]
        if previous is None:
            previous = torch.full((b,), self.sos_index, dtype=torch.long, device=memory.device)
        x = self.token_embed(previous.long().view(b, 1)) + self.pos_embed[:, position : position + 1]
        for block, cache in zip(self.blocks, caches):
            x = block(x, memory, cache)
        return self.head(self.norm(x))[:, 0]


# ------------------------------------------------------------------------------------------------ save / load
def save_generator(directory: str, decoder: PixelDecoder, quantizer: PixelQuantizer, extra: dict | None = None) -> list[str]:
    """Write ``config.json`` (decoder sizes, quantiser settings, ``extra``) and ``model.safetensors`` (decoder
    weights under ``decoder.``, the quantiser's palette under ``quantizer.``). Returns the written paths."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = {f"decoder.{k}": v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    tensors.update({f"quantizer.{k}": v.detach().cpu().contiguous() for k, v in quantizer.state_dict().items()})
    weights = os.path.join(directory, WEIGHTS_NAME)
    save_file(tensors, weights, metadata={"format": "pt", "library": "hf_hybridcl", "kind": "gcrl_decoder"})
    config = {"decoder": asdict(decoder.config), "quantizer": quantizer.settings(), **(extra or {})}
    config_path = os.path.join(directory, CONFIG_NAME)
    with open(config_path, "w") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    return [config_path, weights]


def load_generator(directory: str, device: torch.device | str = "cpu") -> tuple[PixelDecoder, PixelQuantizer, dict]:
    """Inverse of :func:`save_generator`: ``(decoder, quantizer, config dict)``, decoder in eval mode."""
    from safetensors.torch import load_file

    config_path, weights = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    if not (os.path.isfile(config_path) and os.path.isfile(weights)):
        raise HybridCLError(
            f"{directory} is not a saved GCRL decoder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); it is written at the "
            f"end of a `hybridcl train --method gcrl` run with method_args.use_decoder=true."
        )
    with open(config_path) as handle:
        config = json.load(handle)
    decoder = PixelDecoder(DecoderConfig(**config["decoder"]))
    quantizer = PixelQuantizer(**config["quantizer"])
    tensors = load_file(weights)
    decoder.load_state_dict({k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")})
    quantizer.load_state_dict({k[len("quantizer."):]: v for k, v in tensors.items() if k.startswith("quantizer.")})
    return decoder.to(device).eval(), quantizer.to(device), config
