"""``diagnose_run``: measure a trained run's learned attention kernels and write ``<run>/diagnostics.json``.

On a fixed sample of sequences (the same ``n`` sequence ids for every run of a task: drawn with ``sample_seed``,
independent of the run's seed), the model runs one teacher-forced forward pass in float64; a forward pre-hook on
every attention layer's kernel module records the q, k it receives — the model's own projections, positions and
offsets — so nothing of the model's code is repeated here. Each (sequence, role, layer, head) then gives the
numbers of ``measure.head_metrics`` from the real tokens only; they are averaged over sequences in sequence-id
order (so the batch composition and order cannot change them) per (role, layer, head), and over layers × heads per
role. The q·k bilinear forms W_Qhᵀ W_Kh come from the weights alone. Roles: ``enc_self`` (encoder
self-attention), ``dec_self`` (causal decoder self-attention; the LM's only role), ``cross`` (decoder → encoder).
The file's layout is docs/contracts.md §6.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kernel_attention.config import TrainConfig
from kernel_attention.data import DataError, LMBlockDataset, PreparedData, TranslationDataset, ensure_prepared
from kernel_attention.data.collate import collate_lm, collate_translation
from kernel_attention.diagnostics import measure
from kernel_attention.diagnostics.errors import DiagnosticsError
from kernel_attention.evaluation.evaluate import CHECKPOINTS, checkpoint_path, checkpoint_state, load_config
from kernel_attention.kernels.base import Positions, kernel_properties
from kernel_attention.models import build_model
from kernel_attention.models.attention import MultiheadKernelAttention
from kernel_attention.registry import ConfigError
from kernel_attention.store import atomic
from kernel_attention.store.files import DIAGNOSTICS_FILE, DIAGNOSTICS_ROLES
from kernel_attention.store.metrics import git_commit, now_iso
from kernel_attention.tasks import task_class

SCHEMA = 1
ROLES = DIAGNOSTICS_ROLES
SELF_ROLES = ("enc_self", "dec_self")
DECAY_KEYS = ("sv_decay_K", "sv_decay_A")


@dataclass
class DiagnoseConfig:
    """Options of ``scripts/diagnose.py`` (``key=value``)."""

    split: str = "valid"
    n: int = 128  # sequences in the sample
    # None: the checkpoint the run's test score comes from (its trainer.eval_checkpoint), so the diagnostics and
    # the score describe the same weights; an LM study scored on `last` would otherwise be measured on `best`.
    checkpoint: str | None = None
    roles: str = "all"  # all, or a comma list of enc_self, dec_self, cross
    batch_size: int = 16
    sample_seed: int = 0
    rank_rtol: float = measure.spectra.RANK_RTOL  # numerical rank: σ_i > rank_rtol · σ_max
    sv_points: int = 32  # leading singular values kept for the decay curves
    data_dir: str | None = None  # prepared-data folder; None = the run config's (as evaluate.py finds it)

    def validate(self) -> None:
        for key in ("n", "batch_size", "sv_points"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if not 0 < self.rank_rtol < 1:
            raise ConfigError(f"rank_rtol={self.rank_rtol} must be in (0, 1), e.g. 1e-6")
        if self.checkpoint is not None and self.checkpoint not in CHECKPOINTS:
            raise ConfigError(f"checkpoint={self.checkpoint!r} is not allowed; choose one of: {', '.join(CHECKPOINTS)}")
        self.role_list()

    def role_list(self) -> tuple[str, ...]:
        if self.roles == "all":
            return ROLES
        roles = tuple(r.strip() for r in self.roles.split(",") if r.strip())
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise ConfigError(f"roles={self.roles!r} is not allowed; use all or a comma list of {', '.join(ROLES)}")
        return roles


def attention_layers(model: nn.Module) -> list[tuple[str, str, int, MultiheadKernelAttention]]:
    """(module name, role, layer index, module) of every attention layer of a translation model or LM."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, MultiheadKernelAttention):
            role = "cross" if mod.cross else ("enc_self" if name.startswith("encoder") else "dec_self")
            layer = int(re.search(r"layers\.(\d+)\.", name).group(1))  # type: ignore[union-attr]
            out.append((name, role, layer, mod))
    return out


@contextmanager
def capture_qk(layers: list[tuple[str, str, int, MultiheadKernelAttention]]) -> Iterator[dict[str, tuple]]:
    """Record (q, k, kwargs) each layer's kernel module is called with, keyed by the layer's module name."""
    seen: dict[str, tuple] = {}
    handles = []
    for name, _, _, mod in layers:
        def hook(module: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            seen[name] = (args[0].detach(), args[1].detach(), dict(kwargs))  # q, k (B, H, T, D)

        handles.append(mod.kernel.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _positions(kwargs: dict, Tq: int, Tk: int) -> Positions:
    """The positions the kernel's forward resolves for a call (its q_offset default included)."""
    k_off = int(kwargs.get("k_offset", 0))
    q_off = kwargs.get("q_offset")
    if q_off is None:
        q_off = k_off + (Tk - Tq if kwargs.get("causal") else 0)
    return Positions(int(q_off), k_off)


def measure_model(model: nn.Module, batches: list[dict[str, Tensor]], cfg: DiagnoseConfig,
                  roles: tuple[str, ...]) -> dict[str, Any]:
    """Run ``batches`` (each with ``ids`` (B,), the model inputs and real lengths) and aggregate the numbers."""
    layers = [entry for entry in attention_layers(model) if entry[1] in roles]
    fdim = kernel_properties(model).feature_dim
    # (role, layer) -> metric -> [(sequence id, (H,) tensor)]
    acc: dict[tuple[str, int], dict[str, list[tuple[int, Tensor]]]] = defaultdict(lambda: defaultdict(list))
    tokens: dict[str, list[int]] = defaultdict(list)
    model.eval()
    for batch in batches:
        with capture_qk(layers) as seen, torch.no_grad():
            if "src_tokens" in batch:
                model(batch["src_tokens"], batch["prev_output_tokens"], features_only=True)
            else:
                model(batch["tokens"], features_only=True)
        for name, role, layer, mod in layers:
            q, k, kwargs = seen[name]  # (B, H, Tq, D), (B, H, Tk, D)
            pos = _positions(kwargs, q.shape[-2], k.shape[-2])
            for b, sid in enumerate(batch["ids"].tolist()):
                n_q = int(batch["src_len" if role == "enc_self" else "tgt_len"][b])
                n_k = int(batch["tgt_len" if role == "dec_self" else "src_len"][b])
                m = measure.head_matrices(mod.kernel, q[b, :, :n_q], k[b, :, :n_k], causal=mod.causal, pos=pos)
                vals = measure.head_metrics(m, square=role in SELF_ROLES, feature_dim=fdim, rtol=cfg.rank_rtol,
                                            sv_points=cfg.sv_points)
                for key, v in vals.items():
                    acc[(role, layer)][key].append((sid, v))
                if layer == 0:
                    tokens[role].append(n_q)
    return _aggregate(acc, tokens, layers)


def _nanmean(x: Tensor, dim: int) -> Tensor:
    return x.nanmean(dim) if x.numel() else x


def _num(x: float) -> float | None:
    """JSON-safe float (NaN → null)."""
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


def _aggregate(acc: dict, tokens: dict[str, list[int]],
               layers: list[tuple[str, str, int, MultiheadKernelAttention]]) -> dict[str, Any]:
    per_head: list[dict[str, Any]] = []
    decay: dict[str, dict[str, list[Tensor]]] = defaultdict(lambda: defaultdict(list))
    for (role, layer), metrics in sorted(acc.items(), key=lambda kv: (ROLES.index(kv[0][0]), kv[0][1])):
        cols: dict[str, Tensor] = {}
        for key, rows in metrics.items():
            stacked = torch.stack([v for _, v in sorted(rows, key=lambda r: r[0])])  # (N, H) or (N, H, P)
            if key in DECAY_KEYS:
                decay[role][key].append(stacked.flatten(0, 1))  # (N·H, P)
            else:
                cols[key] = _nanmean(stacked, 0)  # (H,): mean over sequences
        n_seq = len(next(iter(metrics.values())))
        for h in range(next(iter(cols.values())).shape[0]):
            per_head.append({"role": role, "layer": layer, "head": h, "n": n_seq,
                             **{key: _num(v[h]) for key, v in cols.items()}})
    summary: dict[str, dict[str, Any]] = {}
    for role in [*ROLES, "all"]:
        rows = [r for r in per_head if role in ("all", r["role"])]
        if not rows:
            continue
        keys = [k for k in rows[0] if k not in ("role", "layer", "head", "n")]
        keys += [k for r in rows for k in r if k not in keys and k not in ("role", "layer", "head", "n")]
        summary[role] = {k: _mean([r.get(k) for r in rows]) for k in dict.fromkeys(keys)}
        if role != "all":
            summary[role]["mean_tokens"] = _num(float(np.mean(tokens[role])))
    sv = {}
    for role, parts in decay.items():
        sv[role] = {}
        for key in DECAY_KEYS:
            allrows = torch.cat(parts[key])  # (rows, P)
            count = (~allrows.isnan()).sum(0)  # (P,)
            sv[role][key.removeprefix("sv_decay_")] = [_num(v) for v in _nanmean(allrows, 0)]
            sv[role]["count"] = [int(c) for c in count]
    weights = []
    for _, role, layer, mod in layers:
        C = mod.d_model
        if mod.cross:
            wq, wk = mod.q_proj.weight, mod.kv_proj.weight[:C]  # (C, C) each
        else:
            wq, wk = mod.qkv_proj.weight[:C], mod.qkv_proj.weight[C : 2 * C]  # (C, C) each
        vals = measure.bilinear_metrics(measure.bilinear_forms(wq.detach(), wk.detach(), mod.heads))
        for h in range(mod.heads):
            weights.append({"role": role, "layer": layer, "head": h, **{k: _num(v[h]) for k, v in vals.items()}})
    for role in ROLES:
        rows = [w for w in weights if w["role"] == role]
        if rows and role in summary:
            summary[role]["qk_form_asymmetry"] = _mean([w["asymmetry"] for w in rows])
            summary[role]["qk_form_negative_mass"] = _mean([w["negative_mass"] for w in rows])
    if weights and "all" in summary:
        summary["all"]["qk_form_asymmetry"] = _mean([w["asymmetry"] for w in weights])
        summary["all"]["qk_form_negative_mass"] = _mean([w["negative_mass"] for w in weights])
    return {"summary": summary, "per_head": per_head, "qk_forms": weights, "sv_decay": sv}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return _num(float(np.mean(vals))) if vals else None


# ---- run folders --------------------------------------------------------------------------------------------
def find_runs(folder: Path | str) -> list[Path]:
    """``folder`` itself if it is a run folder, else every run folder below it (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiagnosticsError(f"{folder} is not a folder; pass a run folder or a sweep folder")
    if (folder / ".hydra" / "config.yaml").is_file():
        return [folder]
    runs = sorted(p.parent.parent for p in folder.rglob(".hydra/config.yaml")
                  if "report" not in p.relative_to(folder).parts)
    if not runs:
        raise DiagnosticsError(f"no run folder (with .hydra/config.yaml) under {folder}; pass a run or sweep folder")
    return runs


def _encoder_decoder(cfg: TrainConfig) -> bool:
    """Which attention roles the run's model has: its task declares the architecture (no task-type branch here)."""
    return task_class(cfg.task).architecture == "encoder_decoder"


def _sample_batches(cfg: TrainConfig, data: PreparedData, opts: DiagnoseConfig) -> tuple[list[dict], list[int]]:
    """The fixed sample as model-ready batches (right padding, real lengths), and its sequence ids."""
    if opts.split not in data.splits:
        raise DiagnosticsError(f"split={opts.split!r} is not in {data.path}; choose one of: {', '.join(data.splits)}")
    encdec = _encoder_decoder(cfg)
    if encdec:
        ds: Any = TranslationDataset(data, opts.split)
    else:
        ds = LMBlockDataset(np.asarray(data.stream(opts.split)), cfg.task.block_size, drop_last=True)
    if len(ds) == 0:
        raise DiagnosticsError(f"split {opts.split!r} of {data.path} has no sequence to diagnose")
    rng = np.random.default_rng(opts.sample_seed)
    ids = sorted(int(i) for i in rng.choice(len(ds), size=min(opts.n, len(ds)), replace=False))
    v = data.vocab
    batches = []
    for start in range(0, len(ids), opts.batch_size):
        chunk = ids[start : start + opts.batch_size]
        if encdec:
            b = collate_translation([ds[i] for i in chunk], pad=v.pad, bos=v.bos, eos=v.eos)
            batch = {"src_tokens": b["src_tokens"], "prev_output_tokens": b["prev_output_tokens"],
                     "src_len": b["src_tokens"].ne(v.pad).sum(1), "tgt_len": b["prev_output_tokens"].ne(v.pad).sum(1)}
        else:
            b = collate_lm([ds[i] for i in chunk], pad=v.pad)
            lengths = torch.full((len(chunk),), b["tokens"].shape[1])  # (B,): full blocks only (drop_last)
            batch = {"tokens": b["tokens"], "src_len": lengths, "tgt_len": lengths}
        batch["ids"] = torch.tensor(chunk)
        batches.append(batch)
    return batches, ids


def diagnose_run(run_dir: Path | str, opts: DiagnoseConfig | None = None, *, write: bool = True) -> dict[str, Any]:
    """Measure ``run_dir``'s checkpoint and (``write``) store the result atomically in ``run_dir/diagnostics.json``.
    Everything is checked before anything is written; bad input raises ``DiagnosticsError`` / ``ConfigError``
    (a folder without a config, a missing or unreadable checkpoint: evaluation's ``EvaluationError``, the same
    exit code)."""
    t0 = time.perf_counter()
    opts = opts or DiagnoseConfig()
    opts.validate()
    run_dir = Path(run_dir)
    cfg = load_config(run_dir, fix="pass a folder that train.py wrote, or a sweep folder holding such folders")
    roles = opts.role_list()
    decoder_only = not _encoder_decoder(cfg)
    if decoder_only and "cross" in roles:
        if opts.roles != "all":
            raise DiagnosticsError(f"roles={opts.roles} asks for cross-attention, but {run_dir} is a language model "
                                   "(decoder self-attention only); use roles=dec_self or roles=all")
        roles = ("dec_self",)
    if decoder_only:
        roles = tuple(r for r in roles if r == "dec_self")
        if not roles:
            raise DiagnosticsError(f"roles={opts.roles} has no role of a language model ({run_dir}); "
                                   "use roles=dec_self")
    opts = replace(opts, checkpoint=opts.checkpoint or cfg.trainer.eval_checkpoint)  # recorded resolved
    ckpt = checkpoint_path(run_dir, opts.checkpoint)  # evaluation's own checks and messages (exit 4)
    try:
        data = PreparedData(opts.data_dir if opts.data_dir else ensure_prepared(cfg.task.data))
    except (DataError, ConfigError) as e:
        raise DiagnosticsError(f"prepared data: {str(e).splitlines()[0]}; pass data_dir=<prepared folder>") from None
    weights = checkpoint_state(ckpt)
    model = build_model(cfg.model, cfg.kernel_name, cfg.kernel, task_class(cfg.task).architecture, data.vocab.size,
                        data.vocab.pad)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise DiagnosticsError(f"{ckpt} does not fit the run's model config: {str(e).splitlines()[0]}") from None
    model.double()  # float64 throughout: exp(q·k/√d) and the eigensolvers need the range and the mantissa
    batches, ids = _sample_batches(cfg, data, opts)
    result = measure_model(model, batches, opts, roles)
    props = kernel_properties(model).to_json()
    out = {
        "schema": SCHEMA,
        "run": {"dir": str(run_dir), "kernel": cfg.kernel_label, "kernel_name": cfg.kernel_name,
                "task": cfg.task.name, "task_type": cfg.task.type, "seed": cfg.seed},
        "kernel_properties": props,
        "options": {k: v for k, v in asdict(opts).items() if k != "data_dir"},
        "roles": list(roles),
        "sample": {"split": opts.split, "n": len(ids), "ids": ids, "data": str(data.path)},
        "heads": model.cfg.heads, "head_dim": model.cfg.d_model // model.cfg.heads,
        **result,
        "seconds": round(time.perf_counter() - t0, 2),
        "created_at": now_iso(),
        "git_commit": git_commit(Path(__file__).parent),
    }
    if write:
        atomic.write_json(run_dir / DIAGNOSTICS_FILE, out)
    return out
