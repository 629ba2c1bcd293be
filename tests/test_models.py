"""Model behaviour for every registered kernel: shapes, padding invariance, causality, cached decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from kernel_attention.kernels import KERNELS
from kernel_attention.models import DecoderCache, ModelConfig, build_model
from kernel_attention.registry import ConfigError, config_from_mapping

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
V, PAD = 37, 0
TINY = ModelConfig(preset="t", encoder_layers=2, decoder_layers=2, d_model=32, ffn_dim=64, heads=4, dropout=0.0)


def _model(kernel: str, task: str = "translation", dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    return build_model(TINY, kernel, None, task, V, PAD).to(dtype).eval()


def _tokens(B: int, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, V, (B, T), generator=g)  # (B, T), no pad/bos/eos ids


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_presets_build(preset: str) -> None:
    """Every preset builds, with exactly the parameters its sizes imply (counted from the architecture on paper,
    as fairseq's transformer is: not from the module tree that num_parameters() walks)."""
    cfg = config_from_mapping(ModelConfig, yaml.safe_load((CONF / f"{preset}.yaml").read_text()), "model")
    arch = "decoder_only" if cfg.encoder_layers == 0 else "encoder_decoder"
    V, C, F = 100, cfg.d_model, cfg.ffn_dim
    attention = 4 * (C * C + C)  # q, k, v, out projections with biases
    ffn = C * F + F + F * C + C
    norm = 2 * C
    enc_layer = attention + ffn + 2 * norm
    dec_layer = enc_layer + (attention + norm if arch == "encoder_decoder" else 0)  # + cross-attention
    positions = cfg.max_positions * C if cfg.positions == "learned" else 0  # sinusoidal: a buffer
    decoder = V * C + positions + cfg.decoder_layers * dec_layer + (0 if cfg.share_decoder_input_output_embed
                                                                   else V * C)
    decoder += norm if cfg.normalize_before else 0  # pre-norm stacks end with a LayerNorm
    encoder = 0
    if arch == "encoder_decoder":
        encoder = (0 if cfg.share_all_embeddings else V * C) + positions + cfg.encoder_layers * enc_layer
        encoder += norm if cfg.normalize_before else 0
    model = build_model(cfg, "edp", None, arch, V, 0)
    assert model.architecture == arch
    assert model.num_parameters() == encoder + decoder > 0


def test_iwslt_preset_matches_fairseq_architecture() -> None:
    cfg = config_from_mapping(ModelConfig, yaml.safe_load((CONF / "transformer_iwslt_de_en.yaml").read_text()), "m")
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model, cfg.ffn_dim, cfg.heads) == (6, 6, 512, 1024, 4)
    assert (cfg.dropout, cfg.normalize_before, cfg.activation) == (0.3, False, "relu")
    # fairseq: embeddings 2 × V × 512 (decoder in/out shared) + 6 enc layers + 6 dec layers + final nothing.
    model = build_model(cfg, "edp", None, "translation", 10000, 0)
    enc_layer = 4 * (512 * 512 + 512) + 2 * 512 * 1024 + 1024 + 512 + 2 * 2 * 512
    dec_layer = enc_layer + 4 * (512 * 512 + 512) + 2 * 512
    assert model.num_parameters() == 2 * 10000 * 512 + 6 * enc_layer + 6 * dec_layer


def test_heads_must_divide_d_model() -> None:
    with pytest.raises(ConfigError, match="does not divide"):
        build_model(ModelConfig(d_model=30, heads=4), "edp", None, "translation", V, PAD)


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_translation_shapes_and_source_padding(kernel: str) -> None:
    model = _model(kernel)
    src, prev = _tokens(2, 7, 1), _tokens(2, 5, 2)
    logits = model(src, prev)  # (B, T, V)
    assert logits.shape == (2, 5, V) and torch.isfinite(logits).all()
    # Extra source padding must not change anything: padded keys get zero weight in cross/encoder attention.
    padded = torch.cat([src, torch.full((2, 3), PAD)], dim=1)  # (B, S + 3)
    torch.testing.assert_close(model(padded, prev), logits, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_lm_is_causal(kernel: str) -> None:
    model = _model(kernel, "lm")
    x = _tokens(2, 9, 3)
    y = x.clone()
    y[:, 6:] = _tokens(2, 3, 4)  # change the future
    torch.testing.assert_close(model(y)[:, :6], model(x)[:, :6], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_cached_decoding_equals_full_forward(kernel: str) -> None:
    model = _model(kernel)
    src, prev = _tokens(3, 6, 5), _tokens(3, 5, 6)
    full = model(src, prev)  # (B, T, V)
    enc = model.encode(src)
    cache = DecoderCache()
    steps = [model.decode(prev[:, t : t + 1], enc, cache) for t in range(prev.shape[1])]  # T × (B, 1, V)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-8, atol=1e-8)
    assert cache.pos == prev.shape[1]


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_cached_lm_decoding_equals_full_forward(kernel: str) -> None:
    model = _model(kernel, "lm")
    x = _tokens(2, 8, 7)
    full = model(x)  # (B, T, V)
    cache = DecoderCache()
    first = model(x[:, :3], cache)  # a 3-token prompt in one call, then one token at a time
    rest = [model(x[:, t : t + 1], cache) for t in range(3, 8)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=1e-8, atol=1e-8)


def test_cache_reorder_selects_beams() -> None:
    model = _model("edp")
    src, prev = _tokens(2, 6, 8), _tokens(2, 4, 9)
    enc = model.encode(src)
    cache = DecoderCache()
    model.decode(prev[:, :3], enc, cache)
    order = torch.tensor([1, 1, 0])
    cache.reorder(order)
    enc2 = type(enc)(enc.out.index_select(0, order), enc.padding_mask.index_select(0, order))
    step = model.decode(prev[order, 3:4], enc2, cache)  # (3, 1, V)
    torch.testing.assert_close(step, model(src[order], prev[order])[:, 3:4], rtol=1e-8, atol=1e-8)


def test_learned_positions_refuse_too_long_input() -> None:
    cfg = ModelConfig(d_model=16, heads=2, encoder_layers=0, decoder_layers=1, positions="learned", max_positions=4)
    model = build_model(cfg, "edp", None, "lm", V, PAD)
    with pytest.raises(ValueError, match="max_positions"):
        model(_tokens(1, 5, 0))


def test_build_model_keeps_its_former_call_forms() -> None:
    """Callers of the former signature (task type names, the task_type keyword) get the same architecture."""
    for old, arch in (("translation", "encoder_decoder"), ("lm", "decoder_only")):
        assert build_model(TINY, "edp", None, old, V, PAD).architecture == arch
        assert build_model(TINY, "edp", None, task_type=old, vocab_size=V, pad_id=PAD).architecture == arch
    with pytest.raises(ConfigError, match="unknown architecture 'seq2seq'"):
        build_model(TINY, "edp", None, "seq2seq", V, PAD)
