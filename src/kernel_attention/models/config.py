"""Model sizes. The task decides the architecture (encoder-decoder for translation, decoder-only for LM); the
model config only says how big it is, so every preset works for every task that fits it."""

from __future__ import annotations

from dataclasses import dataclass

from kernel_attention.registry import ConfigError

ACTIVATIONS = ("relu", "gelu")
POSITIONS = ("sinusoidal", "learned")
INITS = ("fairseq", "gpt2")  # kernel_attention.models.init says what each does and why LMs need gpt2


@dataclass
class ModelConfig:
    """Transformer sizes and regularisation. Defaults are the CPU-scale ``transformer_small`` preset."""

    preset: str = "transformer_small"
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_model: int = 256
    ffn_dim: int = 1024
    heads: int = 4
    dropout: float = 0.1
    activation_dropout: float = 0.0
    activation: str = "relu"
    # False = post-norm (Vaswani et al. 2017 and fairseq's transformer_iwslt_de_en); True = pre-norm.
    normalize_before: bool = False
    # Tie the decoder's input embedding and output projection (Press & Wolf 2017).
    share_decoder_input_output_embed: bool = True
    # Also share the encoder's embedding (needs a joint source/target vocabulary, which our data stage builds).
    share_all_embeddings: bool = False
    positions: str = "sinusoidal"
    max_positions: int = 1024
    # Weight initialisation: fairseq's (embeddings × √d; the translation presets) or GPT-2's (std 0.02, scaled
    # residual projections, no √d; the LM presets). See kernel_attention.models.init.
    init: str = "fairseq"

    def validate(self) -> None:
        for name in ("encoder_layers", "decoder_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("d_model", "ffn_dim", "heads", "max_positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ConfigError(
                f"model.heads={self.heads} does not divide model.d_model={self.d_model}; pick heads from "
                f"{[h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]}"
            )
        for name in ("dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={self.activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        if self.init not in INITS:
            raise ConfigError(f"model.init={self.init!r}; choose one of: {', '.join(INITS)}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"model.positions={self.positions!r}; choose one of: {', '.join(POSITIONS)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads
