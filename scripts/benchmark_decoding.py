#!/usr/bin/env python
"""Cached vs uncached beam search on a translation test set; prints a table.

    OMP_NUM_THREADS=1 python scripts/benchmark_decoding.py                   # Multi30k test, 1,000 sentences
    python scripts/benchmark_decoding.py --n 200 --kernels edp rbf --beam 5 --threads 2
    python scripts/benchmark_decoding.py --run outputs/multi30k/transformer_small/edp/seed1   # trained weights

Cached decoding feeds the decoder one token per step and keeps every layer's keys/values in a ``DecoderCache``;
uncached re-runs the decoder over the whole prefix every step (O(T²) instead of O(T) decoder work per sentence).
Both must give the same hypotheses; the table says whether they did. Without ``--run`` the model is a
``conf/model/<model>.yaml`` Transformer with random weights: it seldom picks EOS, so hypotheses run to the length
limit ``max_len_a·src_len + max_len_b`` (a long-output worst case; ``--max-len-a 1 --max-len-b 0`` gives lengths
near the references').
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from kernel_attention.data import DataConfig, PreparedData, ensure_prepared
from kernel_attention.evaluation.evaluate import checkpoint_state, translate
from kernel_attention.evaluation.generate import SearchConfig, SpecialIds
from kernel_attention.models import build_model
from kernel_attention.registry import config_from_mapping

REPO = Path(__file__).resolve().parents[1]


def _data(task: str, data_dir: str | None) -> PreparedData:
    if data_dir:
        return PreparedData(data_dir)
    os.environ.setdefault("KA_DATA_ROOT", str(REPO.parent / "shared" / "data"))  # as the Makefile and tests do
    preset = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "task" / f"{task}.yaml"), resolve=True)
    return PreparedData(ensure_prepared(DataConfig.from_task(preset)))  # type: ignore[arg-type]


def _model(args: argparse.Namespace, kernel: str, data: PreparedData) -> torch.nn.Module:
    from kernel_attention.config import TrainConfig  # only needed for --run

    if args.run:
        cfg = TrainConfig.from_dict(yaml.safe_load((Path(args.run) / ".hydra" / "config.yaml").read_text()))
        model = build_model(cfg.model, cfg.kernel_name, cfg.kernel, "translation", data.vocab.size, data.vocab.pad)
        model.load_state_dict(checkpoint_state(Path(args.run) / "checkpoints" / f"{args.checkpoint}.pt"))
    else:
        from kernel_attention.models import ModelConfig

        raw = yaml.safe_load((REPO / "conf" / "model" / f"{args.model}.yaml").read_text())
        torch.manual_seed(args.seed)
        model = build_model(config_from_mapping(ModelConfig, raw, "model"), kernel, None, "translation",
                            data.vocab.size, data.vocab.pad)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="multi30k", help="conf/task/<task>.yaml (prepared on demand)")
    ap.add_argument("--data-dir", default=None, help="a prepared data folder instead of --task")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=1000, help="first N sentences of the split")
    ap.add_argument("--model", default="transformer_small", help="conf/model/<model>.yaml (random weights)")
    ap.add_argument("--run", default=None, help="a run folder: use its model and checkpoint instead")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--kernels", nargs="+", default=["edp"])
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--max-len-a", type=float, default=1.2)
    ap.add_argument("--max-len-b", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=4096 // 5, help="source tokens per batch")
    ap.add_argument("--batch-size", type=int, default=128, help="sentences per batch")
    ap.add_argument("--chunk", type=int, default=100, help="sentences timed per mode before switching modes")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = _data(args.task, args.data_dir)
    src_lang = data.langs[0]  # type: ignore[index]
    tokens = data.tokens(args.split, src_lang)
    sources = [tokens[i] for i in range(min(args.n, len(tokens)))]
    v = data.vocab
    ids = SpecialIds(pad=v.pad, unk=v.unk, bos=v.bos, eos=v.eos)
    print(f"{data.path} {args.split}: {len(sources)} sentences, mean source length "
          f"{np.mean([len(s) + 1 for s in sources]):.1f} tokens; beam {args.beam}, max length "
          f"{args.max_len_a}·src+{args.max_len_b}; {args.threads} thread(s) on {args.device}")
    print(f"{'kernel':<14}{'mode':<10}{'seconds':>9}{'sent/s':>9}{'tok/s':>9}{'mean len':>10}{'speedup':>9}"
          f"{'identical':>11}")
    for kernel in (["(run)"] if args.run else args.kernels):
        model = _model(args, kernel, data).to(args.device)
        results: dict[str, tuple[float, list[list[int]]]] = {"cached": (0.0, []), "uncached": (0.0, [])}
        # Alternate the two modes chunk by chunk so that load from other processes on a shared machine slows
        # both alike instead of whichever happened to run at a bad moment.
        for start in range(0, len(sources), args.chunk):
            chunk = sources[start : start + args.chunk]
            for mode in ("cached", "uncached"):
                search = SearchConfig(beam=args.beam, max_len_a=args.max_len_a, max_len_b=args.max_len_b,
                                      use_cache=mode == "cached")
                t0 = time.perf_counter()
                hyps = translate(model, chunk, ids, search, args.max_tokens, args.batch_size, args.device)
                sec, done = results[mode]
                results[mode] = (sec + time.perf_counter() - t0, done + hyps)
        base = results["uncached"][0]
        same = sum(a == b for a, b in zip(results["cached"][1], results["uncached"][1]))
        for mode, (sec, hyps) in results.items():
            n_tok = sum(len(h) + 1 for h in hyps)
            print(f"{kernel:<14}{mode:<10}{sec:>9.1f}{len(hyps) / sec:>9.1f}{n_tok / sec:>9.0f}"
                  f"{n_tok / len(hyps):>10.1f}{base / sec:>8.1f}×"
                  f"{(f'{same}/{len(hyps)}' if mode == 'cached' else ''):>11}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
