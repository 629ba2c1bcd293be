"""Issue 16: an LM starts at ln V, not at its own-symbol logit ≈ √d. References: ln V, GPT-2's stds (0.02 and
0.02/√N), hedgehog's identity maps — all written here, none read off the library."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from kernel_attention.models import ModelConfig, build_model
from kernel_attention.registry import ConfigError, config_from_mapping

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
V, PAD = 69, 0  # Tiny Shakespeare's character vocabulary (65 symbols + 4 specials)
LM = ModelConfig(preset="t", encoder_layers=0, decoder_layers=4, d_model=128, ffn_dim=512, heads=4, dropout=0.0,
                 positions="learned", normalize_before=True, activation="gelu")


def _initial_loss(init: str, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**LM.__dict__, "init": init}), "edp", None, "lm", V, PAD).eval()
    tokens = torch.randint(4, V, (8, 65), generator=torch.Generator().manual_seed(seed))  # (B, T+1)
    with torch.no_grad():
        logits = model(tokens[:, :-1])  # (B, T, V)
    return float(F.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1)))


def test_gpt2_init_starts_an_lm_at_chance() -> None:
    losses = [_initial_loss("gpt2", s) for s in range(3)]
    assert all(abs(loss - math.log(V)) < 0.1 for loss in losses), losses


def test_fairseq_init_makes_an_lm_predict_its_input_symbol() -> None:
    # The defect the gpt2 scheme removes: the own-symbol logit ≈ √d pushes the loss to ≈ √128 ≈ 11, far above ln V.
    assert _initial_loss("fairseq") > math.log(V) + 4.0


@pytest.mark.parametrize("preset", ["lm_small", "lm_base"])
def test_lm_presets_use_gpt2_init_and_translation_presets_do_not(preset: str) -> None:
    assert yaml.safe_load((CONF / f"{preset}.yaml").read_text())["init"] == "gpt2"
    for other in ("transformer_mini", "transformer_small", "transformer_iwslt_de_en"):
        cfg = config_from_mapping(ModelConfig, yaml.safe_load((CONF / f"{other}.yaml").read_text()), "model")
        assert cfg.init == "fairseq"  # the translation study's numbers stay those of fairseq's init


def test_gpt2_stds_and_residual_scaling() -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(**{**LM.__dict__, "init": "gpt2"}), "edp", None, "lm", V, PAD)
    n_branches = 2 * LM.decoder_layers  # attention + feed-forward per layer (nanoGPT: 2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith("bias") and "norm" not in name:
            assert float(p.abs().max()) == 0.0, name
        if p.dim() != 2:
            continue
        w = p.detach().flatten()
        if name.startswith("decoder.embed.tokens"):
            assert float(p.detach()[PAD].abs().max()) == 0.0
            w = p.detach()[torch.arange(V) != PAD].flatten()
        want = 0.02 / math.sqrt(n_branches) if name.endswith(("out_proj.weight", "fc2.weight")) else 0.02
        se = want * math.sqrt(2.0 / w.numel())  # standard error of a sample std (normal draws)
        assert abs(float(w.std()) - want) < 5 * se, (name, float(w.std()), want)
        assert abs(float(w.mean())) < 5 * want / math.sqrt(w.numel()), name


def test_gpt2_init_leaves_kernel_parameters_alone() -> None:
    cfg = ModelConfig(**{**LM.__dict__, "init": "gpt2"})
    model = build_model(cfg, "hedgehog", {"m": 16}, "lm", V, PAD)
    maps = [p for n, p in model.named_parameters() if n.endswith("kernel.weight")]
    assert maps, "hedgehog's feature maps not found"
    eye = torch.eye(16, LM.d_model // LM.heads)  # (m, D): hedgehog's identity start for m <= D
    for w in maps:  # (H, m, D)
        assert torch.equal(w.detach(), eye.expand_as(w))


def test_gpt2_init_drops_the_sqrt_d_embedding_scale() -> None:
    model = build_model(ModelConfig(**{**LM.__dict__, "init": "gpt2"}), "edp", None, "lm", V, PAD).eval()
    dec = model.decoder
    tokens = torch.tensor([[5, 6, 7]])  # (1, 3)
    want = dec.embed.tokens.weight[tokens[0]] + dec.embed.positions.weight[:3]  # (3, C): no √d
    torch.testing.assert_close(dec.embed(tokens)[0], want)


def test_unknown_init_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.init='xavier'; choose one of: fairseq, gpt2"):
        ModelConfig(init="xavier").validate()
