#!/usr/bin/env python
"""Training throughput: our Transformer with every kernel vs ``torch.nn.Transformer``, and model FLOPs utilisation.

    OMP_NUM_THREADS=1 python scripts/benchmark_training.py                       # transformer_small, Multi30k
    python scripts/benchmark_training.py --kernels edp ei --steps 4 --rounds 3
    python scripts/benchmark_training.py --device cuda --dtype bfloat16 --model transformer_iwslt_de_en --compile
    python scripts/benchmark_training.py --quick --out /tmp/bench                  # smoke test (seconds)

Every model trains on the SAME list of batches: real Multi30k training batches (the data stage's
``ensure_prepared`` on conf/task/multi30k.yaml with KA_DATA_ROOT, token-budget sampler, seed 0) or, if that
data is unavailable (or ``--synthetic``), random tokens with Multi30k-like lengths. One training step is
forward, label-smoothed cross-entropy (0.1, fairseq's), backward and a fused AdamW update (lr 5e-4, betas 0.9/0.98),
identical for all models. ``--loss fused`` (default; what ``train.py`` runs) fuses the output projection into the
loss (``tasks/losses.py``, no (N, V) logits), for the baseline too; ``--loss logits`` materialises the logits and
calls ``F.cross_entropy``. ``torch.nn.Transformer`` gets the same sizes, dropout, post-norm, sinusoidal
positions, token embeddings and a decoder output projection tied to the target embedding, so the only
difference from our ``edp`` model is the implementation (it also has final encoder/decoder LayerNorms,
~0.1 % of the FLOPs).

Timing interleaves the models: ``--rounds`` rounds, each timing ``--steps`` steps of every model in turn, and
tokens/s is the median over rounds — load changes on a shared machine then hit all models alike. tokens/s
counts target tokens (non-pad, fairseq's wps). MFU = model FLOPs/s ÷ the dense-matmul FLOPs/s of this machine
measured in the same run (a large GEMM before and after the models; the higher figure is used). Model FLOPs
are counted on the padded batch shapes: 6 × (parameters of the matmuls) per token plus the attention products
(2 × 2 × Tq × Tk × d_model per layer forward, ×3 for training), causal attention counted in full.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from torch import Tensor, nn

from kernel_attention.benchmarks import DTYPES, kernel_presets, machine_info, matmul_flops_per_s, sync, write_tables
from kernel_attention.models import ModelConfig, build_model
from kernel_attention.models.transformer import sinusoidal_table
from kernel_attention.registry import config_from_mapping
from kernel_attention.tasks import linear_label_smoothed_nll
from kernel_attention.training.cpu_malloc import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
BASELINE = "torch.nn.Transformer"
COLUMNS = ["model", "kernel_path", "params_m", "step_ms", "tokens_per_s", "x_edp", "x_torch", "model_gflops_per_s",
           "mfu", "rounds"]


class TorchTransformer(nn.Module):
    """``torch.nn.Transformer`` wrapped with our embedding, positions and tied output projection."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.pad_id, self.scale = pad_id, math.sqrt(cfg.d_model)
        self.src_embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        self.tgt_embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        for e in (self.src_embed, self.tgt_embed):
            nn.init.normal_(e.weight, mean=0.0, std=cfg.d_model**-0.5)
        self.register_buffer("table", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = nn.Transformer(
            d_model=cfg.d_model, nhead=cfg.heads, num_encoder_layers=cfg.encoder_layers,
            num_decoder_layers=cfg.decoder_layers, dim_feedforward=cfg.ffn_dim, dropout=cfg.dropout,
            activation=cfg.activation, batch_first=True, norm_first=cfg.normalize_before,
        )

    def embed(self, emb: nn.Embedding, tokens: Tensor) -> Tensor:
        return self.dropout(emb(tokens) * self.scale + self.table[: tokens.shape[1]])  # (B, T, C)

    @property
    def output_weight(self) -> Tensor:
        return self.tgt_embed.weight  # (V, C), tied output projection

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor, features_only: bool = False) -> Tensor:
        """src (B, S), prev_output_tokens (B, T) → logits (B, T, V) (hidden (B, T, C) with ``features_only``)."""
        T = prev_output_tokens.shape[1]
        src_pad = src_tokens.eq(self.pad_id)  # (B, S)
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=src_tokens.device)  # (T, T)
        x = self.transformer(
            self.embed(self.src_embed, src_tokens), self.embed(self.tgt_embed, prev_output_tokens),
            tgt_mask=causal, tgt_is_causal=True, src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad,
        )  # (B, T, C)
        return x if features_only else x @ self.output_weight.t()  # (B, T, C) or (B, T, V)


def load_preset(kind: str, name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / kind / f"{name}.yaml").read_text())


def multi30k_batches(n: int, max_tokens: int) -> tuple[list[dict], int, int, str]:
    """The first n training batches (seed 0) of real Multi30k: (batches, vocab size, pad id, description)."""
    from kernel_attention import data as kd

    os.environ.setdefault("KA_DATA_ROOT", str(REPO.parent / "shared" / "data"))
    task = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "task" / "multi30k.yaml"), resolve=True)

    data = kd.PreparedData(kd.ensure_prepared(kd.DataConfig.from_task(task)))  # type: ignore[arg-type]
    ds = kd.TranslationDataset(data, "train")
    sampler = kd.TokenBatchSampler(ds.src_sizes, ds.tgt_sizes, max_tokens, seed=0, shuffle=True)
    v = data.vocab
    batches = []
    for indices in sampler:
        batches.append(kd.collate_translation([ds[int(i)] for i in indices], pad=v.pad, bos=v.bos, eos=v.eos))
        if len(batches) == n:
            break
    return batches, v.size, v.pad, f"Multi30k train (real, {data.path.name}), max_tokens={max_tokens}"


def synthetic_batches(n: int, max_tokens: int, vocab: int = 8000, pad: int = 0) -> tuple[list[dict], int, int, str]:
    """Random tokens with Multi30k-like BPE lengths (source ~ 16 ± 6, target ~ 14 ± 5, ≥ 3)."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n):
        L = int(np.clip(rng.normal(17, 6), 4, 60))  # the sampler groups similar lengths: one size per batch
        B = max(1, max_tokens // (L + 1))
        src_len = np.clip(rng.normal(L, 2, B), 3, L).astype(int)
        tgt_len = np.clip(rng.normal(L - 2, 2, B), 3, L).astype(int)
        src = torch.full((B, L + 1), pad, dtype=torch.long)  # (B, S)
        prev = torch.full((B, L + 1), pad, dtype=torch.long)  # (B, T)
        tgt = torch.full((B, L + 1), pad, dtype=torch.long)  # (B, T)
        for b in range(B):
            src[b, : src_len[b] + 1] = torch.randint(4, vocab, (src_len[b] + 1,))
            prev[b, : tgt_len[b] + 1] = torch.randint(4, vocab, (tgt_len[b] + 1,))
            tgt[b, : tgt_len[b] + 1] = torch.randint(4, vocab, (tgt_len[b] + 1,))
        batches.append({"src_tokens": src, "prev_output_tokens": prev, "target": tgt,
                        "ntokens": int((tgt != pad).sum())})
    return batches, vocab, pad, f"synthetic, Multi30k-like lengths, max_tokens={max_tokens}"


def train_flops(cfg: ModelConfig, vocab: int, B: int, S: int, T: int) -> float:
    """Forward+backward FLOPs of one padded batch (3 × forward; matmuls and attention products only)."""
    C, F_ = cfg.d_model, cfg.ffn_dim
    enc = cfg.encoder_layers * (B * S * 2 * (4 * C * C + 2 * C * F_) + 2 * 2 * B * S * S * C)
    dec_self = B * T * 2 * (4 * C * C) + 2 * 2 * B * T * T * C
    dec_cross = B * T * 2 * (2 * C * C) + B * S * 2 * (2 * C * C) + 2 * 2 * B * T * S * C
    dec = cfg.decoder_layers * (dec_self + dec_cross + B * T * 2 * 2 * C * F_)
    out = 2 * B * T * C * vocab
    return 3.0 * (enc + dec + out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="transformer_small", help="conf/model preset")
    ap.add_argument("--kernels", nargs="+", help="kernel presets (conf/kernel stems); default: all")
    ap.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch (multi30k preset: 4096)")
    ap.add_argument("--batches", type=int, default=6, help="distinct batches, cycled")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per model per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--synthetic", action="store_true", help="do not try the real Multi30k data")
    ap.add_argument("--no-baseline", action="store_true", help="skip torch.nn.Transformer")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="autocast dtype (bf16 on GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model")
    ap.add_argument("--loss", choices=["fused", "logits"], default="fused",
                    help="fused output projection + loss (train.py's) or logits + F.cross_entropy; same for all")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-keep-freed-memory", action="store_true",
                    help="leave glibc malloc's mmap/trim defaults (train.py tunes them on CPU)")
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny model, synthetic, 1 step")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "benchmarks")
    ap.add_argument("--name", default="training")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.max_tokens, args.batches, args.synthetic, args.gemm_n = "transformer_tiny", 256, 2, True, 256
        args.steps, args.rounds, args.warmup = 1, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and not args.no_keep_freed_memory:
        keep_freed_memory()  # as train.py does on CPU (training/cpu_malloc.py); the same for every model
    device, amp_dtype = torch.device(args.device), DTYPES[args.dtype]

    cfg = config_from_mapping(ModelConfig, load_preset("model", args.model), "model")
    if args.synthetic:
        batches, vocab, pad, data_desc = synthetic_batches(args.batches, args.max_tokens)
    else:
        try:
            batches, vocab, pad, data_desc = multi30k_batches(args.batches, args.max_tokens)
        except Exception as e:  # no data here: same shapes, random tokens
            print(f"Multi30k unavailable ({type(e).__name__}: {e}); using synthetic batches", file=sys.stderr)
            batches, vocab, pad, data_desc = synthetic_batches(args.batches, args.max_tokens)
    batches = [{k: (t.to(device) if isinstance(t, Tensor) else t) for k, t in b.items()} for b in batches]

    models: dict[str, nn.Module] = {}
    paths: dict[str, str] = {}
    torch.manual_seed(0)
    if not args.no_baseline:
        models[BASELINE] = TorchTransformer(cfg, vocab, pad)
        paths[BASELINE] = "SDPA (nn.MultiheadAttention)"
    for label, name, params in kernel_presets(REPO / "conf", args.kernels):
        models[label] = build_model(cfg, name, params, "translation", vocab, pad)
        attn = models[label].encoder_layers[0].self_attn.kernel  # type: ignore[index, union-attr]
        S = int(np.median([b["src_tokens"].shape[1] for b in batches]))
        paths[label] = attn.resolve_path(S, S)  # what auto runs at the median length
    opts = {}
    raw = dict(models)  # the uncompiled modules (output_weight)
    for key, m in list(models.items()):
        m.to(device).train()
        # fused=True as train.py's build_optimizer uses on CPU and CUDA; the same for every model.
        opts[key] = torch.optim.AdamW(m.parameters(), lr=5e-4, betas=(0.9, 0.98), weight_decay=0.0, fused=True)
        if args.compile:
            models[key] = torch.compile(m)  # type: ignore[assignment]

    def step(key: str, batch: dict) -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            if args.loss == "fused":
                hidden = models[key](batch["src_tokens"], batch["prev_output_tokens"], features_only=True)  # (B,T,C)
                weight = raw[key].output_weight  # (V, C)
                loss = linear_label_smoothed_nll(hidden, weight, batch["target"], 0.1, pad)[0] / batch["ntokens"]
            else:
                logits = models[key](batch["src_tokens"], batch["prev_output_tokens"])  # (B, T, V)
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch["target"].flatten(), ignore_index=pad,
                                       label_smoothing=0.1, reduction="sum") / batch["ntokens"]
        loss.backward()
        opts[key].step()
        opts[key].zero_grad(set_to_none=True)

    gemm = [matmul_flops_per_s(n=args.gemm_n, device=args.device)]
    for key in models:  # warm-up: allocator, autotuning, compilation
        for i in range(args.warmup):
            step(key, batches[i % len(batches)])
    sync(args.device)
    tokens = sum(batches[i % len(batches)]["ntokens"] for i in range(args.steps))
    flops = sum(train_flops(cfg, vocab, b["src_tokens"].shape[0], b["src_tokens"].shape[1],
                            b["prev_output_tokens"].shape[1]) for b in (batches[i % len(batches)]
                                                                       for i in range(args.steps)))
    secs: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.rounds):
        for key in models:
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(key, batches[i % len(batches)])  # the same steps every round
            sync(args.device)
            secs[key].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {tokens / secs[k][-1]:.0f} tok/s" for k in models),
              flush=True)
    gemm.append(matmul_flops_per_s(n=args.gemm_n, device=args.device))
    peak = max(gemm)

    rows = []
    med = {k: statistics.median(v) for k, v in secs.items()}
    for key, m in models.items():
        tps = tokens / med[key]
        rows.append({
            "model": key if key == BASELINE else f"ours: {key}", "kernel_path": paths[key],
            "params_m": sum(p.numel() for p in m.parameters()) / 1e6, "step_ms": 1e3 * med[key] / args.steps,
            "tokens_per_s": tps, "x_edp": med["edp"] / med[key] if "edp" in med else None,
            "x_torch": med[BASELINE] / med[key] if BASELINE in med else None,
            "model_gflops_per_s": flops / med[key] / 1e9, "mfu": flops / med[key] / peak, "rounds": args.rounds,
        })
    n_pad = sum(b["prev_output_tokens"].numel() for b in batches)
    n_real = sum(b["ntokens"] for b in batches)
    info = machine_info(args.device)
    info.update(
        model=f"{args.model} (d_model {cfg.d_model}, {cfg.encoder_layers}+{cfg.decoder_layers} layers, "
              f"{cfg.heads} heads, ffn {cfg.ffn_dim}, vocab {vocab})",
        data=data_desc,
        batches=f"{len(batches)} batches, mean {np.mean([b['src_tokens'].shape[0] for b in batches]):.0f} "
                f"sentences × {np.mean([b['src_tokens'].shape[1] for b in batches]):.1f} src tokens, "
                f"target padding {100 * (1 - n_real / n_pad):.0f} %",
        dtype=args.dtype, compile=args.compile, loss=args.loss,
        keep_freed_memory=args.device == "cpu" and not args.no_keep_freed_memory,
        matmul_gflops_per_s=f"{peak / 1e9:.1f} (fp32 GEMM n={args.gemm_n}; before {gemm[0] / 1e9:.1f}, "
                            f"after {gemm[1] / 1e9:.1f})",
        command="python " + " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    )
    notes = [
        "tokens_per_s = non-pad target tokens / s (median over rounds); x_edp, x_torch = throughput ratio to ours "
        "with edp and to torch.nn.Transformer, same batches, same run; kernel_path = what path=auto runs at the "
        "median source length; mfu = model FLOPs/s ÷ measured matmul FLOPs/s.",
    ]
    csv_path, md_path = write_tables(rows, COLUMNS, args.out / args.name, title="Training throughput",
                                     header=info, notes=notes)
    for r in rows:
        print(" ".join(f"{c}={r.get(c)}" for c in COLUMNS))
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
