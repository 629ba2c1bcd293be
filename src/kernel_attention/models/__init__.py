"""Transformers with kernel attention: encoder-decoder for translation, decoder-only for LM."""

from kernel_attention.models.attention import MultiheadKernelAttention
from kernel_attention.models.config import ModelConfig
from kernel_attention.models.transformer import (
    ARCHITECTURES,
    DecoderCache,
    DecoderOnlyLM,
    EncoderDecoderTransformer,
    EncoderOut,
    build_model,
)

__all__ = [
    "ARCHITECTURES",
    "DecoderCache",
    "DecoderOnlyLM",
    "EncoderDecoderTransformer",
    "EncoderOut",
    "ModelConfig",
    "MultiheadKernelAttention",
    "build_model",
]
