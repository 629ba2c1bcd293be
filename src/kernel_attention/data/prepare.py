"""``ensure_prepared``: raw text → sentencepiece model + binarized token arrays in ``<out_root>/<task>/<fingerprint>/``.

The fingerprint is a hash of the sources' sha256 and every output-affecting setting (``DataConfig``), so the
same inputs are never prepared twice (a re-run only hashes the sources) and any change gets a new folder instead
of reusing stale arrays. Publishing is atomic: everything is written into ``.tmp-<fingerprint>-<pid>-<rand>`` in
the same parent and renamed to ``<fingerprint>`` only when ``meta.json`` (written last) is in place; an
interrupted run leaves a ``.tmp-*`` folder that no reader looks at and that the next run removes once its
process is gone. An existing fingerprint folder is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from kernel_attention.data.binarize import encode_lines, select, token_dtype, write_array
from kernel_attention.data.config import DataConfig, DataError
from kernel_attention.data.sources import Corpus, Source, make_source, split_lines
from kernel_attention.data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, spm_options, train_sentencepiece

log = logging.getLogger(__name__)

# Bump when the code changes what is written for the same settings, so old folders are not reused.
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"


def fingerprint(cfg: DataConfig, sources: list[dict[str, Any]]) -> str:
    """16 hex digits of sha256 over the format version, the settings and the sources' content hashes."""
    payload = {
        "format_version": FORMAT_VERSION,
        "settings": cfg.fingerprint_settings(),
        "sources": sorted(f"{r['split']}/{r['lang']}:{r['sha256']}" for r in sources),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_complete(folder: Path) -> bool:
    """A prepared folder is usable only once its meta.json (written last) exists."""
    return (folder / "meta.json").is_file()


def ensure_prepared(cfg: DataConfig) -> Path:
    """Prepare ``cfg`` unless an identical preparation exists; return its folder. Training calls this."""
    source = make_source(cfg)
    records = source.describe()
    fp = fingerprint(cfg, records)
    task_dir = cfg.task_dir()
    final = task_dir / fp
    if is_complete(final):
        log.info("prepared data is up to date: %s", final)
        return final
    if final.exists():
        raise DataError(f"{final} exists but has no meta.json (not written by prepare?); remove that folder")
    task_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(task_dir)
    tmp = task_dir / f"{TMP_PREFIX}{fp}-{os.getpid()}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        _prepare_into(tmp, cfg, source, records, fp)
        try:
            os.rename(tmp, final)  # atomic; fails (never overwrites) if another process published first
        except OSError:
            if not is_complete(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("prepared %s", final)
    return final


def _remove_stale_tmp(task_dir: Path) -> None:
    """Delete temp folders whose writer process is gone (a killed prepare); live writers are left alone."""
    for d in task_dir.glob(f"{TMP_PREFIX}*"):
        try:
            pid = int(d.name.split("-")[-2])
        except (ValueError, IndexError):
            continue
        try:
            os.kill(pid, 0)  # signal 0: existence check only
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


# -- the work ----------------------------------------------------------------------------------------------


def _prepare_into(out: Path, cfg: DataConfig, source: Source, records: list[dict[str, Any]], fp: str) -> None:
    t0 = time.perf_counter()
    corpus = source.load()
    if "train" not in corpus.splits:
        raise DataError(f"task {cfg.task}: the source has no training split; set data.hf_splits / data.path")
    model = train_sentencepiece(cfg, _spm_training_text(cfg, corpus))
    (out / "spm.model").write_bytes(model)
    tok = Tokenizer(model)
    dtype = token_dtype(tok.vocab_size)
    if cfg.type == "translation":
        splits, filter_report = _write_translation(out, cfg, corpus, tok, dtype)
    else:
        splits, filter_report = _write_lm(out, cfg, corpus, tok, dtype), None
    meta = {
        "format_version": FORMAT_VERSION,
        "task": cfg.task,
        "type": cfg.type,
        "fingerprint": fp,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "langs": {"src": cfg.src_lang, "tgt": cfg.tgt_lang} if cfg.langs else None,
        "vocab": {"size": tok.vocab_size, "pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS},
        "char_level": cfg.spm_model_type == "char",
        "dtype": dtype.name,
        "splits": splits,
        "source": {"kind": cfg.source, "path": cfg.path if cfg.source == "hf" else str(cfg.source_path()),
                   "origin": cfg.origin},
        "sources": records,
        "text_preprocessing": cfg.text_preprocessing,
        "spm": spm_options(cfg),
        "filter": filter_report,
        "settings": cfg.fingerprint_settings(),
        "prepare_seconds": round(time.perf_counter() - t0, 3),
    }
    tmp_meta = out / "meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_meta, out / "meta.json")


def _spm_training_text(cfg: DataConfig, corpus: Corpus) -> list[str]:
    """Training split only: joint source+target sentences (translation) or the training text's lines (lm)."""
    if cfg.langs is not None:
        train = corpus.lines["train"]
        sentences = train[cfg.src_lang] + train[cfg.tgt_lang]
    else:
        sentences = split_lines(corpus.text["train"])
    if not any(s.strip() for s in sentences):
        raise DataError(f"task {cfg.task}: the training split is empty; check the train file(s) of {cfg.path}")
    return sentences


def _write_translation(
    out: Path, cfg: DataConfig, corpus: Corpus, tok: Tokenizer, dtype: np.dtype
) -> tuple[dict[str, Any], dict[str, Any]]:
    src, tgt = cfg.src_lang, cfg.tgt_lang
    splits: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for split in corpus.splits:
        lines = corpus.lines[split]
        (sf, sl), (tf, tl) = (encode_lines(tok, lines[lang], cfg.spm_threads) for lang in (src, tgt))
        if split == "train":
            keep, report = _filter_train(cfg, sl, tl)
            (sf, sl), (tf, tl) = select(sf, sl, keep), select(tf, tl, keep)
        else:
            # valid/test keep every line in order: the references must match the hypotheses one to one.
            ref = "".join(line + "\n" for line in lines[tgt])
            (out / f"{split}.{tgt}.ref.txt").write_text(ref, encoding="utf-8")
        write_array(out / f"{split}.{src}", sf, sl, dtype)
        write_array(out / f"{split}.{tgt}", tf, tl, dtype)
        splits[split] = {"n": len(sl), "tokens": {src: int(sl.sum()), tgt: int(tl.sum())},
                         "unk": {src: int((sf == UNK).sum()), tgt: int((tf == UNK).sum())}}
    return splits, report


def _filter_train(cfg: DataConfig, src_lens: np.ndarray, tgt_lens: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """fairseq-style length filters on the training pairs; the report says how many each filter removed."""
    removed_by: dict[str, np.ndarray] = {}
    if cfg.min_len > 0:
        removed_by[f"min_len={cfg.min_len}"] = (src_lens < cfg.min_len) | (tgt_lens < cfg.min_len)
    if cfg.max_len is not None:
        removed_by[f"max_len={cfg.max_len}"] = (src_lens > cfg.max_len) | (tgt_lens > cfg.max_len)
    if cfg.max_len_ratio is not None:
        lo = np.maximum(np.minimum(src_lens, tgt_lens), 1)
        removed_by[f"max_len_ratio={cfg.max_len_ratio}"] = np.maximum(src_lens, tgt_lens) / lo > cfg.max_len_ratio
    keep = np.ones(len(src_lens), dtype=bool)
    for bad in removed_by.values():
        keep &= ~bad
    counts = {name: int(bad.sum()) for name, bad in removed_by.items()}
    report = {"before": len(src_lens), "after": int(keep.sum()), "removed_by": counts}
    if not keep.any():
        detail = ", ".join(f"{name} removed {n}" for name, n in counts.items()) or "no filter set"
        raise DataError(
            f"task {cfg.task}: the training set is empty after filtering all {len(src_lens)} pairs ({detail}); "
            "relax data.min_len / data.max_len / data.max_len_ratio"
        )
    if report["after"] < report["before"]:
        log.info("filtered training pairs: %s", report)
    return keep, report


def _write_lm(out: Path, cfg: DataConfig, corpus: Corpus, tok: Tokenizer, dtype: np.dtype) -> dict[str, Any]:
    """One token stream per split; ``.idx`` marks line boundaries."""
    char = cfg.spm_model_type == "char"
    splits: dict[str, Any] = {}
    for split in corpus.splits:
        text = corpus.text[split]
        flat, lens = encode_lm_text(tok, text, char, cfg.spm_threads)
        write_array(out / split, flat, lens, dtype)
        splits[split] = {"n": len(lens), "tokens": int(lens.sum()), "chars": len(text),
                         "unk": int((flat == UNK).sum())}
    return splits


def encode_lm_text(tok: Tokenizer, text: str, char_level: bool, threads: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """An LM text → (flat token ids, tokens per line), exactly as prepare writes a split (and as evaluation
    encodes a test file): char models keep "\n" as a token, subword models end every line with EOS."""
    if char_level:
        # "\n" is a token of the char model: encoding lines with their newline and concatenating is exactly
        # encode(text), in bounded memory. A split cut mid-line keeps its partial first/last line.
        pieces = text.split("\n")
        lines = [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
        return encode_lines(tok, lines, threads)
    # Subword LM: every line is followed by EOS (fairseq's language-modeling convention).
    return _append_eos(*encode_lines(tok, split_lines(text), threads))


def _append_eos(flat: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    new_lens = lens + 1
    out = np.empty(int(new_lens.sum()), dtype=flat.dtype)
    ends = np.cumsum(new_lens) - 1
    mask = np.ones(len(out), dtype=bool)
    mask[ends] = False
    out[mask] = flat
    out[ends] = EOS
    return out, new_lens

