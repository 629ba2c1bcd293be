"""Encoder-decoder Transformer (translation) and decoder-only Transformer (LM) with kernel attention in every
attention role. Vaswani et al. 2017; sizes and initialisation follow fairseq's ``transformer`` family so that
``transformer_iwslt_de_en`` is the architecture Wright & Gonzalez 2021 trained."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernel_attention.kernels.base import KernelConfig
from kernel_attention.models.attention import MultiheadKernelAttention
from kernel_attention.models.config import ModelConfig
from kernel_attention.models.init import embedding_scale, gpt2_init_
from kernel_attention.registry import ConfigError

KernelSpec = KernelConfig | dict[str, Any] | None


def sinusoidal_table(n: int, dim: int) -> Tensor:
    """fairseq's sinusoidal positions: sin in the first half of the channels, cos in the second. (n, dim)"""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))  # (half,)
    ang = torch.arange(n, dtype=torch.float32)[:, None] * freq[None, :]  # (n, half)
    table = torch.cat([ang.sin(), ang.cos()], dim=1)  # (n, 2*half)
    return F.pad(table, (0, dim - 2 * half))  # (n, dim): odd dims get a zero channel


class Embedder(nn.Module):
    """Token embedding (× √d under fairseq's init) + positions, then dropout."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int, tokens: nn.Embedding | None = None) -> None:
        super().__init__()
        self.tokens = tokens if tokens is not None else nn.Embedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        if tokens is None:
            nn.init.normal_(self.tokens.weight, mean=0.0, std=cfg.d_model**-0.5)
            nn.init.zeros_(self.tokens.weight[pad_id])
        self.scale = embedding_scale(cfg.init, cfg.d_model)
        self.learned = cfg.positions == "learned"
        self.max_positions = cfg.max_positions
        if self.learned:
            self.positions = nn.Embedding(cfg.max_positions, cfg.d_model)
            nn.init.normal_(self.positions.weight, mean=0.0, std=cfg.d_model**-0.5)
        else:
            self.register_buffer("table", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """tokens (B, T) at positions offset..offset+T-1 → (B, T, C)."""
        T = tokens.shape[1]
        if offset + T > self.max_positions:
            if self.learned:
                raise ConfigError(f"a sequence of {offset + T} tokens exceeds model.max_positions={self.max_positions} "
                                  "(learned positions); raise model.max_positions or use model.positions=sinusoidal")
            self.table = sinusoidal_table(2 * (offset + T), self.table.shape[1]).to(self.table.device)
            self.max_positions = self.table.shape[0]
        pos = self.positions.weight[offset : offset + T] if self.learned else self.table[offset : offset + T]  # (T, C)
        x = self.tokens(tokens) * self.scale + pos.to(self.tokens.weight.dtype)  # (B, T, C)
        return self.dropout(x)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.act = nn.ReLU() if cfg.activation == "relu" else nn.GELU()
        self.dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))  # (B, T, C)


class Block(nn.Module):
    """One layer: self-attention, optional cross-attention, feed-forward; post- or pre-norm residuals."""

    def __init__(self, cfg: ModelConfig, kernel_name: str, kernel_cfg: KernelSpec, *, causal: bool, cross: bool):
        super().__init__()
        self.pre = cfg.normalize_before
        self.self_attn = MultiheadKernelAttention(cfg.d_model, cfg.heads, kernel_name, kernel_cfg, causal=causal)
        self.self_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn = (
            MultiheadKernelAttention(cfg.d_model, cfg.heads, kernel_name, kernel_cfg, cross=True) if cross else None
        )
        self.cross_norm = nn.LayerNorm(cfg.d_model) if cross else None
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, fn: Any) -> Tensor:
        if self.pre:
            return x + self.dropout(fn(norm(x)))  # (B, T, C)
        return norm(x + self.dropout(fn(x)))  # (B, T, C)

    def forward(
        self,
        x: Tensor,
        *,
        self_padding_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        cache: dict[str, dict[str, Tensor]] | None = None,
        offset: int = 0,
    ) -> Tensor:
        """x (B, T, C) at positions offset..offset+T−1 → (B, T, C)."""
        self_cache = cache.setdefault("self", {}) if cache is not None else None
        x = self._residual(
            x, self.self_norm,
            lambda h: self.self_attn(h, key_padding_mask=self_padding_mask, cache=self_cache, offset=offset),
        )
        if self.cross_attn is not None:
            cross_cache = cache.setdefault("cross", {}) if cache is not None else None
            x = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(h, memory=memory, key_padding_mask=memory_padding_mask, cache=cross_cache,
                                          offset=offset),
            )
        return self._residual(x, self.ffn_norm, self.ffn)


@dataclass
class EncoderOut:
    out: Tensor  # (B, S, C)
    padding_mask: Tensor  # (B, S) True = pad


@dataclass
class DecoderCache:
    """Incremental-decoding state: per layer, the cached keys/values of self- and cross-attention."""

    layers: list[dict[str, dict[str, Tensor]]] = field(default_factory=list)
    pos: int = 0  # tokens already decoded (the position offset of the next call)

    def reorder(self, new_order: Tensor) -> None:
        """Select batch rows (beam search): new_order (B',) indexes the current batch."""
        for layer in self.layers:
            for attn in layer.values():
                for key, t in attn.items():
                    attn[key] = t.index_select(0, new_order)


class Decoder(nn.Module):
    """Stack of causal blocks (with cross-attention for translation) + output projection."""

    def __init__(self, cfg: ModelConfig, kernel_name: str, kernel_cfg: KernelSpec, vocab_size: int, pad_id: int,
                 *, cross: bool, tokens: nn.Embedding | None = None) -> None:
        super().__init__()
        self.embed = Embedder(cfg, vocab_size, pad_id, tokens)
        self.layers = nn.ModuleList(
            Block(cfg, kernel_name, kernel_cfg, causal=True, cross=cross) for _ in range(cfg.decoder_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.normalize_before else nn.Identity()
        if cfg.share_decoder_input_output_embed:
            self.output = None
        else:
            self.output = nn.Linear(cfg.d_model, vocab_size, bias=False)
            nn.init.normal_(self.output.weight, mean=0.0, std=cfg.d_model**-0.5)

    @property
    def output_weight(self) -> Tensor:
        """(V, C) the output projection: the target embedding when tied."""
        return self.embed.tokens.weight if self.output is None else self.output.weight

    def forward(self, tokens: Tensor, enc: EncoderOut | None = None, cache: DecoderCache | None = None,
                features_only: bool = False) -> Tensor:
        """tokens (B, T) — only the new ones when ``cache`` is given → logits (B, T, V), or with
        ``features_only`` the final hidden states (B, T, C) (the training loss fuses the projection)."""
        offset = cache.pos if cache is not None else 0
        x = self.embed(tokens, offset)  # (B, T, C)
        if cache is not None and not cache.layers:
            cache.layers = [{} for _ in self.layers]
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                memory=enc.out if enc is not None else None,
                memory_padding_mask=enc.padding_mask if enc is not None else None,
                cache=cache.layers[i] if cache is not None else None,
                offset=offset,
            )  # (B, T, C)
        if cache is not None:
            cache.pos += tokens.shape[1]
        x = self.final_norm(x)  # (B, T, C)
        return x if features_only else x @ self.output_weight.t()  # (B, T, C) or (B, T, V)


class EncoderDecoderTransformer(nn.Module):
    """Translation model: encoder self-attention, causal decoder self-attention, cross-attention."""

    task_type = "translation"

    def __init__(self, cfg: ModelConfig, kernel_name: str, kernel_cfg: KernelSpec, vocab_size: int, pad_id: int):
        super().__init__()
        self.cfg, self.pad_id = cfg, pad_id
        self.encoder_embed = Embedder(cfg, vocab_size, pad_id)
        self.encoder_layers = nn.ModuleList(
            Block(cfg, kernel_name, kernel_cfg, causal=False, cross=False) for _ in range(cfg.encoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.normalize_before else nn.Identity()
        shared = self.encoder_embed.tokens if cfg.share_all_embeddings else None
        self.decoder = Decoder(cfg, kernel_name, kernel_cfg, vocab_size, pad_id, cross=True, tokens=shared)

    def encode(self, src_tokens: Tensor) -> EncoderOut:
        """src_tokens (B, S) → EncoderOut(out (B, S, C), padding_mask (B, S))."""
        pad = src_tokens.eq(self.pad_id)  # (B, S)
        x = self.encoder_embed(src_tokens)  # (B, S, C)
        for layer in self.encoder_layers:
            x = layer(x, self_padding_mask=pad)  # (B, S, C)
        return EncoderOut(self.encoder_norm(x), pad)

    def decode(self, prev_output_tokens: Tensor, enc: EncoderOut, cache: DecoderCache | None = None) -> Tensor:
        """prev_output_tokens (B, T) → logits (B, T, V). With a cache pass only the new tokens."""
        return self.decoder(prev_output_tokens, enc, cache)

    @property
    def output_weight(self) -> Tensor:
        return self.decoder.output_weight  # (V, C)

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor, features_only: bool = False) -> Tensor:
        """Teacher forcing: src (B, S), prev_output_tokens (B, T) → logits (B, T, V) (hidden (B, T, C) with
        ``features_only``)."""
        enc = self.encode(src_tokens)
        if features_only:
            return self.decoder(prev_output_tokens, enc, features_only=True)  # (B, T, C)
        return self.decode(prev_output_tokens, enc)  # (B, T, V): forward = decode ∘ encode, as search uses

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class DecoderOnlyLM(nn.Module):
    """Language model: a stack of causal kernel-attention blocks."""

    task_type = "lm"

    def __init__(self, cfg: ModelConfig, kernel_name: str, kernel_cfg: KernelSpec, vocab_size: int, pad_id: int):
        super().__init__()
        self.cfg, self.pad_id = cfg, pad_id
        self.decoder = Decoder(cfg, kernel_name, kernel_cfg, vocab_size, pad_id, cross=False)

    @property
    def output_weight(self) -> Tensor:
        return self.decoder.output_weight  # (V, C)

    def forward(self, tokens: Tensor, cache: DecoderCache | None = None, features_only: bool = False) -> Tensor:
        """tokens (B, T) → logits (B, T, V) (hidden (B, T, C) with ``features_only``)."""
        return self.decoder(tokens, None, cache, features_only=features_only)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(
    cfg: ModelConfig, kernel_name: str, kernel_cfg: KernelSpec, task_type: str, vocab_size: int, pad_id: int
) -> EncoderDecoderTransformer | DecoderOnlyLM:
    """The task's architecture at ``cfg``'s size with kernel ``kernel_name`` in every attention role."""
    cfg.validate()
    if task_type == "translation":
        if cfg.encoder_layers < 1 or cfg.decoder_layers < 1:
            raise ConfigError("translation needs model.encoder_layers >= 1 and model.decoder_layers >= 1")
        model: EncoderDecoderTransformer | DecoderOnlyLM = EncoderDecoderTransformer(
            cfg, kernel_name, kernel_cfg, vocab_size, pad_id)
    elif task_type == "lm":
        if cfg.decoder_layers < 1:
            raise ConfigError("language modelling needs model.decoder_layers >= 1")
        model = DecoderOnlyLM(cfg, kernel_name, kernel_cfg, vocab_size, pad_id)
    else:
        raise ConfigError(f"unknown task type {task_type!r}; choose translation or lm")
    if cfg.init == "gpt2":
        gpt2_init_(model)
    return model
