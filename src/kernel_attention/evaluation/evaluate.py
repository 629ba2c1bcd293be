"""``evaluate_run``: score one run folder's checkpoint on a split and record it in the run's metrics.json.

Reads what training left (``.hydra/config.yaml``, ``checkpoints/<name>.pt``) and the prepared data, rebuilds the
model, and writes ``<split>.hyp.txt`` (translation) plus the ``test`` section of metrics.json (docs/contracts.md
§3) through training's ``update_metrics``, so there is one metrics writer. Everything is checked before anything
is written: bad input raises ``EvaluationError`` (one line naming the fix) and leaves the folder untouched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from kernel_attention.config import TrainConfig
from kernel_attention.data import DataError, PreparedData, ensure_prepared
from kernel_attention.evaluation.bleu import bleu_stats, corpus_scores
from kernel_attention.evaluation.generate import SearchConfig, SpecialIds, beam_search
from kernel_attention.evaluation.lm import lm_perplexity
from kernel_attention.models import EncoderDecoderTransformer, build_model
from kernel_attention.registry import ConfigError
from kernel_attention.training import atomic
from kernel_attention.training import checkpoint as ckpt_io
from kernel_attention.training.metrics import read_metrics, update_metrics

CHECKPOINTS = ("best", "avg", "last")


class EvaluationError(ValueError):
    """The run folder or the options cannot be evaluated. The message is one line and names the fix."""


def make_batches(lengths: Sequence[int], max_tokens: int, max_sentences: int) -> list[list[int]]:
    """Indices grouped longest first so padding is small; a batch holds at most ``max_sentences`` sentences and
    ``max_tokens`` padded source tokens (a longer sentence gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        # Longest first: the batch's first sentence sets its padded width.
        fits = bool(batches) and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens
        if fits and len(batches[-1]) < max_sentences:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def translate(
    model: EncoderDecoderTransformer,
    sources: Sequence[np.ndarray],
    ids: SpecialIds,
    search: SearchConfig,
    max_tokens: int = 4096,
    max_sentences: int = 128,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """Best hypothesis (token ids, no BOS/EOS) for every source sentence (ids without EOS), in input order.
    Sources get EOS appended and right padding, as in training's ``collate_translation``."""
    lengths = [len(s) + 1 for s in sources]
    out: list[list[int]] = [[] for _ in sources]
    for batch in make_batches(lengths, max_tokens, max_sentences):
        src = torch.full((len(batch), max(lengths[i] for i in batch)), ids.pad, dtype=torch.long)  # (b, S)
        for row, i in enumerate(batch):
            src[row, : lengths[i]] = torch.as_tensor(np.append(sources[i], ids.eos), dtype=torch.long)
        for i, hyps in zip(batch, beam_search(model, src.to(device), ids, search)):
            out[i] = hyps[0].tokens if hyps else []
    return out


def _load_config(run_dir: Path) -> TrainConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise EvaluationError(f"{run_dir} is not a run folder (no .hydra/config.yaml); pass run_dir=<a folder "
                              "that train.py wrote, e.g. outputs/multi30k/transformer_small/edp/seed1>")
    try:
        return TrainConfig.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (ConfigError, yaml.YAMLError) as e:
        raise EvaluationError(f"{path}: {str(e).splitlines()[0]}") from None


def _checkpoint_path(run_dir: Path, name: str) -> Path:
    if name not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={name!r} is not allowed; choose one of: {', '.join(CHECKPOINTS)}")
    path = run_dir / ckpt_io.CKPT_DIR / f"{name}.pt"
    if not path.is_file():
        have = sorted(p.stem for p in (run_dir / ckpt_io.CKPT_DIR).glob("*.pt") if p.stem in CHECKPOINTS)
        fix = f"pick checkpoint={' or '.join(have)}" if have else "train the run first (python train.py ...)"
        raise EvaluationError(f"{path} not found; {fix}")
    return path


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but CUDA is not available on this machine; use device=auto or cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device={device!r} is not a device ({str(e).splitlines()[0]}); "
                          "use auto, cpu or cuda:N") from None


def evaluate_run(
    run_dir: Path | str,
    checkpoint: str = "best",
    split: str = "test",
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float | None = None,
    max_len_b: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 128,
    no_unk: bool = False,
    use_cache: bool = True,
    lm_stride: int | None = None,
    data_dir: Path | str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Score ``run_dir``'s ``checkpoint`` on ``split`` and merge the result into its metrics.json; returns it.

    Translation: beam search (``beam``, ``lenpen``, max length ``max_len_a·src_len + max_len_b``, by default the
    task's), detokenized sacreBLEU + signature, chrF, tokenized BLEU for Moses-tokenized+lowercased corpora, and
    per-sentence BLEU statistics; hypotheses go to ``<split>.hyp.txt``. LM: loss, ppl (and bpc for char-level)
    over the split with a sliding window of the training context (``task.block_size``; stride ``lm_stride``,
    default the window). ``split="test"`` falls back to ``valid`` when the corpus has no test split (Tiny
    Shakespeare); the section is ``test`` either way and records the split. Another split writes ``eval_<split>``.
    ``data_dir`` overrides the prepared-data folder (default: the run config's, found via ``ensure_prepared``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvaluationError(f"run_dir={run_dir} does not exist; pass the folder train.py wrote")
    cfg = _load_config(run_dir)
    ckpt_path = _checkpoint_path(run_dir, checkpoint)
    try:
        data = PreparedData(data_dir if data_dir is not None else ensure_prepared(cfg.task.data))
    except (DataError, ConfigError) as e:
        raise EvaluationError(f"prepared data: {str(e).splitlines()[0]}") from None
    section = "test" if split == "test" else f"eval_{split}"
    if split == "test" and "test" not in data.splits:
        split = "valid"
    if split not in data.splits:
        raise EvaluationError(f"split={split!r} is not in {data.path}; choose one of: {', '.join(data.splits)}")

    dev = _resolve_device(device)
    model = build_model(cfg.model, cfg.kernel_name, cfg.kernel, cfg.task.type, data.vocab.size, data.vocab.pad)
    state = checkpoint_state(ckpt_path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise EvaluationError(f"{ckpt_path} does not fit the run's model config: {str(e).splitlines()[0]}") from None
    model.to(dev).eval()

    t0 = time.perf_counter()
    result: dict[str, Any] = {"checkpoint": checkpoint, "split": split}
    if cfg.task.type == "translation":
        search = SearchConfig(
            beam=beam,
            lenpen=lenpen,
            max_len_a=cfg.task.max_len_a if max_len_a is None else max_len_a,
            max_len_b=cfg.task.max_len_b if max_len_b is None else max_len_b,
            no_unk=no_unk,
            use_cache=use_cache,
        )
        search.validate()  # a bad beam / length setting is a ConfigError
        result.update(_evaluate_translation(model, data, split, search, max_tokens or cfg.task.max_tokens,
                                            batch_size, dev, run_dir, section))
    else:
        window = cfg.task.block_size
        out = lm_perplexity(model, torch.from_numpy(np.asarray(data.stream(split), dtype=np.int64)), window,
                            stride=lm_stride, batch_size=max(1, (max_tokens or cfg.task.max_tokens) // window),
                            char_level=bool(data.meta.get("char_level")))
        result.update({"n": out["n_tokens"], "loss": out["loss"], "ppl": out["ppl"], "window": out["window"],
                       "stride": out["stride"]})
        if "bpc" in out:
            result["bpc"] = out["bpc"]
    result["eval_seconds"] = round(time.perf_counter() - t0, 3)

    # Replace the whole section: keys of an earlier evaluation (e.g. tok_bleu) must not survive.
    stale = {key: None for key in read_metrics(run_dir).get(section, {}) if key not in result}
    update_metrics(run_dir, {section: {**stale, **result}})
    return result


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file (``{"model": state_dict, ...}``), loaded with weights_only."""
    try:
        state = ckpt_io.load(path)
    except Exception as e:  # a truncated or foreign file: say which one
        raise EvaluationError(f"{path} cannot be loaded ({ckpt_io.load_problem(e, path)}); re-save it or pick "
                              "another") from None
    if not isinstance(state, dict) or "model" not in state:
        raise EvaluationError(f"{path} has no 'model' weights; it was not written by train.py")
    return state["model"]


def _evaluate_translation(
    model: EncoderDecoderTransformer,
    data: PreparedData,
    split: str,
    search: SearchConfig,
    max_tokens: int,
    batch_size: int,
    device: torch.device,
    run_dir: Path,
    section: str,
) -> dict[str, Any]:
    src_lang = data.langs[0]  # type: ignore[index]
    tokens = data.tokens(split, src_lang)
    sources = [tokens[i] for i in range(len(tokens))]
    refs = data.references(split)
    if len(refs) != len(sources):
        raise EvaluationError(f"{data.path}: {len(sources)} {split} sources but {len(refs)} references; re-prepare")
    v = data.vocab
    ids = SpecialIds(pad=v.pad, unk=v.unk, bos=v.bos, eos=v.eos)
    # max_tokens bounds the beam-expanded batch, as the decoder holds beam rows per sentence.
    t0 = time.perf_counter()
    hyp_ids = translate(model, sources, ids, search, max(max_tokens // search.beam, 1), batch_size, device)
    seconds = time.perf_counter() - t0
    tok = data.tokenizer
    hyps = [tok.decode(h) for h in hyp_ids]

    # Tokenized+lowercased corpora (fairseq's IWSLT'14): references are Moses-tokenized lowercase text, and so
    # are the hypotheses after sentencepiece decoding; fairseq's reported number is BLEU on exactly that text.
    prep = str(data.meta.get("text_preprocessing", "raw"))
    tokenized_lowercased = "tokenized" in prep and "lowercased" in prep
    scores = corpus_scores(hyps, refs, tokenized_lowercased)
    hyp_file = "test.hyp.txt" if section == "test" else f"{split}.hyp.txt"
    atomic.write_text(run_dir / hyp_file, "".join(h + "\n" for h in hyps))
    return {
        "n": len(hyps),
        **scores,
        "beam": search.beam,
        "lenpen": search.lenpen,
        "max_len_a": search.max_len_a,
        "max_len_b": search.max_len_b,
        # Same settings as the reported BLEU, so summed stats reproduce it (paired bootstrap in the report).
        "bleu_stats": bleu_stats(hyps, refs, tokenize="13a", lowercase=tokenized_lowercased),
        "hypotheses": hyp_file,
        "sentences_per_s": round(len(hyps) / max(seconds, 1e-9), 2),
    }
