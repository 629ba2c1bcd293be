"""``DataConfig``: every setting of the data stage, typed and validated, plus the data error type.

A task preset (``conf/task/<name>.yaml``) carries ``name``, ``type`` and a ``data:`` section; ``DataConfig.from_task``
turns that plain mapping into this dataclass so that no library code ever sees a Hydra ``DictConfig``. Unknown keys
and wrong types fail here with one line (``ConfigError``), before any file is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_attention.registry import ConfigError, config_from_mapping

# The two layouts the data stage prepares: parallel sentence pairs (``translation``) or one token stream (``lm``).
# A task preset's ``type`` names its layout (recorded in meta.json and the fingerprint); which task type reads a
# layout is the task registry's business (``kernel_attention.tasks``), which sits above this stage.
LAYOUTS = ("translation", "lm")
SOURCES = ("local", "hf", "file")
SPM_MODEL_TYPES = ("bpe", "unigram", "char")

# Settings that say *where* things are, not *what* is produced: the source bytes are fingerprinted by content
# (sha256), so moving the raw mirror or the output folder must not invalidate prepared data. ``obtain`` is the
# hint printed when a file is missing and cannot change the arrays either.
LOCATION_FIELDS = ("root", "out_root", "obtain")


class DataError(ValueError):
    """The input data is missing or malformed. The message is one line: which file, what is wrong, the fix."""


@dataclass
class DataConfig:
    """Settings of ``prepare`` (text → sentencepiece → binarized token arrays). See ``conf/task/*.yaml``."""

    task: str
    type: str = "translation"
    # Where the raw corpora live (machine-wide mirror; presets use ${oc.env:KA_DATA_ROOT,data/raw}).
    root: str = "data/raw"
    # local: a folder of {split}.{lang} (translation) or {split}.txt (lm) files; file: one text file cut into
    # splits by character fractions; hf: a Hugging Face hub dataset id loaded with datasets.load_dataset.
    source: str = "local"
    # Folder / file relative to ``root`` (or absolute); for source=hf the hub dataset id.
    path: str = ""
    # Where prepared data is written: <out_root>/<task>/<fingerprint>/ (relative to the working directory).
    out_root: str = "data"
    src_lang: str = "de"
    tgt_lang: str = "en"
    # source=file: fractions of the characters for train, valid[, test], taken in order.
    split_fractions: list[float] = field(default_factory=lambda: [0.9, 0.1])
    # source=hf: the dataset config name (e.g. wikitext-2-v1), a pinned revision, our split → hub split names,
    # and the text column for LM datasets (translation uses columns named by language or a "translation" dict).
    hf_name: str | None = None
    hf_revision: str | None = None
    hf_splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "valid": "validation", "test": "test"}
    )
    hf_text_field: str = "text"
    # Provenance, copied to meta.json: where the text comes from and what was already done to it (evaluation
    # uses text_preprocessing to decide e.g. whether tokenized BLEU is meaningful).
    origin: str = ""
    text_preprocessing: str = "raw"
    # How to obtain missing files; appended to "missing file" errors.
    obtain: str = ""
    # sentencepiece, trained on the training split only (joint source+target for translation).
    spm_model_type: str = "bpe"
    # For char models this is an upper bound: the vocabulary is the set of training characters (+4 specials).
    vocab_size: int = 8000
    character_coverage: float = 1.0
    # Sentences sampled for spm training; caps training time on big corpora.
    input_sentence_size: int = 1_000_000
    spm_threads: int = 2
    spm_seed: int = 1
    max_sentence_length: int = 16384
    # Training-set filters (translation only, in sentencepiece tokens without BOS/EOS, like fairseq);
    # valid/test keep every line in order.
    min_len: int = 1
    max_len: int | None = 256
    max_len_ratio: float | None = None

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> DataConfig:
        """Build from a resolved task preset mapping ``{name, type, data: {...}, <training keys>...}``."""
        if not isinstance(task, Mapping) or "name" not in task:
            raise ConfigError("task config needs a 'name' (pick a preset: task=multi30k, task=iwslt, ...)")
        data = task.get("data")
        if not isinstance(data, Mapping):
            raise ConfigError(f"task {task['name']!r} has no 'data:' section; see conf/task/multi30k.yaml")
        params = {"task": task["name"], "type": task.get("type", "translation"), **data}
        return cls.from_mapping(params)

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> DataConfig:
        """Build from a flat mapping of DataConfig fields; unknown keys or bad values raise ``ConfigError``."""
        cfg = config_from_mapping(cls, dict(params), "data")
        cfg.split_fractions = [float(x) for x in cfg.split_fractions]
        cfg.hf_splits = {str(k): str(v) for k, v in cfg.hf_splits.items()}
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check value ranges and combinations; one-line ``ConfigError`` naming the key."""

        def bad(msg: str) -> None:
            raise ConfigError(f"data: {msg}")

        if not self.task or "/" in self.task or self.task.startswith("."):
            bad(f"task name {self.task!r} must be a plain folder name")
        if self.type not in LAYOUTS:
            bad(f"type={self.type!r}; choose one of: {', '.join(LAYOUTS)}")
        if self.source not in SOURCES:
            bad(f"source={self.source!r}; choose one of: {', '.join(SOURCES)}")
        if not self.path:
            bad("path is empty; set data.path to a folder/file under data.root or a hub dataset id")
        if self.source != "hf" and not str(self.root).strip():
            bad("root is empty (is KA_DATA_ROOT set to an empty string?); set KA_DATA_ROOT=/path/to/raw/corpora "
                "or task.data.root=...")
        if self.spm_model_type not in SPM_MODEL_TYPES:
            bad(f"spm_model_type={self.spm_model_type!r}; choose one of: {', '.join(SPM_MODEL_TYPES)}")
        if self.type == "translation":
            if self.source == "file":
                bad("source=file (one text file cut by fractions) is for type=lm; translation needs parallel files")
            if not self.src_lang or not self.tgt_lang or self.src_lang == self.tgt_lang:
                bad(f"src_lang={self.src_lang!r} and tgt_lang={self.tgt_lang!r} must be two different languages")
        if self.source == "file":
            fr = self.split_fractions
            if len(fr) not in (2, 3) or any(x <= 0 for x in fr) or sum(fr) > 1.0 + 1e-9:
                bad(f"split_fractions={fr} must be 2 or 3 positive numbers (train, valid[, test]) summing to ≤ 1")
        if self.source == "hf" and "train" not in self.hf_splits:
            bad(f"hf_splits={self.hf_splits} must map at least 'train' to a hub split")
        if self.vocab_size < 8 or self.vocab_size > 2**31 - 1:
            bad(f"vocab_size={self.vocab_size} must be between 8 and 2^31-1")
        if not 0.0 < self.character_coverage <= 1.0:
            bad(f"character_coverage={self.character_coverage} must be in (0, 1]")
        if self.input_sentence_size < 0 or self.spm_threads < 1 or self.max_sentence_length < 1:
            bad("input_sentence_size must be ≥ 0 (0 = all), spm_threads and max_sentence_length ≥ 1")
        if self.min_len < 0:
            bad(f"min_len={self.min_len} must be ≥ 0")
        if self.max_len is not None and self.max_len < max(self.min_len, 1):
            bad(f"max_len={self.max_len} must be ≥ min_len={self.min_len} and ≥ 1 (or null for no limit)")
        if self.max_len_ratio is not None and self.max_len_ratio < 1.0:
            bad(f"max_len_ratio={self.max_len_ratio} must be ≥ 1 (or null for no limit)")

    # -- derived ---------------------------------------------------------------------------------------------

    @property
    def langs(self) -> tuple[str, str] | None:
        """(src, tgt) for translation, None for LM."""
        return (self.src_lang, self.tgt_lang) if self.type == "translation" else None

    def source_path(self) -> Path:
        """The local folder (source=local) or file (source=file): ``path`` if absolute, else ``root/path``."""
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else Path(self.root).expanduser() / p

    def task_dir(self) -> Path:
        """``<out_root>/<task>``: the parent of every prepared fingerprint folder of this task."""
        return Path(self.out_root).expanduser() / self.task

    def fingerprint_settings(self) -> dict[str, Any]:
        """Every setting that can change the prepared files (locations excluded; sources are hashed instead)."""
        settings = dataclasses.asdict(self)
        for key in LOCATION_FIELDS:
            settings.pop(key)
        if self.source != "hf":
            # local/file: the path is a location; the files' sha256 identify the content.
            settings.pop("path")
        return settings
