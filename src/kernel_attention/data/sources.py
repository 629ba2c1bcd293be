"""Source readers: find the raw text of every split, hash it, and load it as lines.

A source is used in two steps so that a re-run is near-instant: ``describe()`` checks that every file is there
and returns its sha256 (what the fingerprint is computed from), and ``load()`` decodes the text, only when the
fingerprint folder does not exist yet.

- ``local``: fairseq-style folder, ``{train,valid,test}.{src,tgt}`` (translation) or ``{train,valid,test}.txt`` (lm).
- ``file``: one text file (lm) cut into train/valid[/test] by fractions of its *characters* (Tiny Shakespeare: 90/10,
  as in char-rnn / nanoGPT).
- ``hf``: a Hugging Face hub dataset through ``datasets.load_dataset`` (imported here only, lazily), e.g.
  ``bentrevett/multi30k`` (columns ``de``/``en``; the same raw Multi30k text) or ``Salesforce/wikitext`` with
  ``wikitext-2-v1`` / ``wikitext-103-v1`` (the "tokens" release: word-tokenized with ``<unk>``; identical lines to
  ``wiki.*.tokens`` and to pytorch/examples' ``wikitext-2/*.txt``) or ``*-raw-v1`` (untokenized, no ``<unk>``:
  a different corpus for perplexity purposes). Its content hash is taken over the loaded text.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_attention.data.config import DataConfig, DataError

SPLITS = ("train", "valid", "test")


@dataclass
class Corpus:
    """Loaded text. Translation: ``lines[split][lang]``; LM: ``text[split]`` (the exact characters)."""

    lines: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)

    @property
    def splits(self) -> list[str]:
        present = set(self.lines) | set(self.text)
        return [s for s in SPLITS if s in present]


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, streamed (WikiText-103 is ~0.5 GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def decode_utf8(data: bytes, path: Path | str) -> str:
    """Decode strictly; a bad byte is reported with its file and 1-based line number."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (byte {data[e.start:e.start + 1]!r} at offset {e.start}); "
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def split_lines(text: str) -> list[str]:
    """Lines split on '\\n' only (str.splitlines would also split on \\x0c, \\u2028, ... and break alignment)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it does not start an empty one
    return lines


def read_text(path: Path) -> str:
    return decode_utf8(path.read_bytes(), path)


class Source:
    """Base class: ``describe()`` → list of source records (with sha256); ``load()`` → ``Corpus``."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    def describe(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def load(self) -> Corpus:
        raise NotImplementedError

    def _missing(self, what: str) -> DataError:
        hint = self.cfg.obtain or (
            f"stage the files under data.root={self.cfg.root} (KA_DATA_ROOT) or set data.path / data.source"
        )
        return DataError(f"{what}; {hint}")


class LocalSource(Source):
    """A fairseq-style folder of split files."""

    def _files(self) -> list[tuple[str, str | None, Path]]:
        folder = self.cfg.source_path()
        if not folder.is_dir():
            raise self._missing(f"data folder {folder} does not exist (task {self.cfg.task}, data.path)")
        langs = self.cfg.langs
        if langs is None:
            files: list[tuple[str, str | None, Path]] = [(s, None, folder / f"{s}.txt") for s in SPLITS]
        else:
            files = [(s, lang, folder / f"{s}.{lang}") for s in SPLITS for lang in langs]
        for split, lang, path in files:
            if not path.is_file():
                part = f"split {split}" + (f", language {lang}" if lang else "")
                raise self._missing(f"{path} is missing ({part})")
        return files

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"split": s, "lang": lang, "path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for s, lang, p in self._files()
        ]

    def load(self) -> Corpus:
        corpus = Corpus()
        for split, lang, path in self._files():
            text = read_text(path)
            if lang is None:
                corpus.text[split] = text
            else:
                corpus.lines.setdefault(split, {})[lang] = split_lines(text)
        if self.cfg.langs is not None:
            src, tgt = self.cfg.langs
            for split, by_lang in corpus.lines.items():
                n_src, n_tgt = len(by_lang[src]), len(by_lang[tgt])
                if n_src != n_tgt:
                    folder = self.cfg.source_path()
                    raise DataError(
                        f"parallel files differ in length: {folder / f'{split}.{src}'} has {n_src} lines, "
                        f"{folder / f'{split}.{tgt}'} has {n_tgt} lines; they must be line-aligned"
                    )
        return corpus


class FileSource(Source):
    """One text file cut into consecutive splits by fractions of its characters."""

    def _file(self) -> Path:
        path = self.cfg.source_path()
        if not path.is_file():
            raise self._missing(f"text file {path} does not exist (task {self.cfg.task}, data.path)")
        return path

    def describe(self) -> list[dict[str, Any]]:
        p = self._file()
        return [{"split": "all", "lang": None, "path": str(p.resolve()), "bytes": p.stat().st_size,
                 "sha256": sha256_file(p), "split_fractions": self.cfg.split_fractions}]

    def load(self) -> Corpus:
        text = read_text(self._file())
        n = len(text)
        # Cut at int(n * cumulative fraction), as nanoGPT does (train = text[:int(n * 0.9)]).
        bounds = [0, *(min(n, int(n * c)) for c in itertools.accumulate(self.cfg.split_fractions))]
        if abs(sum(self.cfg.split_fractions) - 1.0) < 1e-9:
            bounds[-1] = n  # float rounding must not drop the last characters
        return Corpus(text={s: text[a:b] for s, a, b in zip(SPLITS, bounds[:-1], bounds[1:])})


class HFSource(Source):
    """A Hugging Face hub dataset. ``datasets`` is imported here only: training never imports it."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self._corpus: Corpus | None = None

    def _load_split(self, load_dataset: Any, split: str, hub_split: str) -> Any:
        try:
            return load_dataset(self.cfg.path, self.cfg.hf_name, split=hub_split, revision=self.cfg.hf_revision)
        except Exception as e:  # network, unknown id, unknown split: all become one actionable line
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(
                f"could not load hub dataset {self.cfg.path!r} (name={self.cfg.hf_name!r}, split={hub_split!r} "
                f"for {split}): {msg}; check the id/network or use data.source=local with a staged copy"
            ) from None

    def _column(self, ds: Any, lang: str | None) -> list[str]:
        columns = list(getattr(ds, "column_names", None) or ds.keys())
        if lang is None:
            if self.cfg.hf_text_field not in columns:
                raise DataError(f"hub dataset {self.cfg.path!r} has no column {self.cfg.hf_text_field!r} "
                                f"(columns: {columns}); set data.hf_text_field")
            return list(ds[self.cfg.hf_text_field])
        if lang in columns:
            return list(ds[lang])
        if "translation" in columns:
            return [t[lang] for t in ds["translation"]]
        raise DataError(f"hub dataset {self.cfg.path!r} has no column {lang!r} nor a 'translation' column "
                        f"(columns: {columns})")

    def load(self) -> Corpus:
        if self._corpus is not None:
            return self._corpus
        try:
            from datasets import load_dataset
        except ImportError:
            raise DataError("data.source=hf needs the 'datasets' package: pip install datasets") from None
        corpus = Corpus()
        for split in SPLITS:
            if split not in self.cfg.hf_splits:
                continue
            ds = self._load_split(load_dataset, split, self.cfg.hf_splits[split])
            if self.cfg.langs is None:
                # Hub WikiText rows keep their trailing "\n"; strip it so rows become lines of one text.
                rows = [r[:-1] if r.endswith("\n") else r for r in self._column(ds, None)]
                corpus.text[split] = "".join(r + "\n" for r in rows)
            else:
                by_lang = {lang: [s.replace("\n", " ") for s in self._column(ds, lang)] for lang in self.cfg.langs}
                corpus.lines[split] = by_lang
        self._corpus = corpus
        return corpus

    def describe(self) -> list[dict[str, Any]]:
        corpus = self.load()
        records = []
        for split in corpus.splits:
            texts = (
                {None: corpus.text[split]}
                if self.cfg.langs is None
                else {lang: "".join(s + "\n" for s in corpus.lines[split][lang]) for lang in self.cfg.langs}
            )
            for lang, text in texts.items():
                data = text.encode("utf-8")
                records.append({"split": split, "lang": lang, "hf": self.cfg.path, "hf_name": self.cfg.hf_name,
                                "hf_split": self.cfg.hf_splits[split], "hf_revision": self.cfg.hf_revision,
                                "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        return records


def make_source(cfg: DataConfig) -> Source:
    """The reader for ``cfg.source``."""
    return {"local": LocalSource, "file": FileSource, "hf": HFSource}[cfg.source](cfg)
