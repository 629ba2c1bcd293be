"""prepare → PreparedData on the real corpora (Multi30k, Tiny Shakespeare, IWSLT'14 valid/test) and on small
generated corpora: round trips, fingerprints, caching, atomicity, the hub source and every bad-input error."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import kernel_attention.data.prepare as prepare_mod
from kernel_attention.data import DataConfig, DataError, PreparedData, ensure_prepared
from kernel_attention.data.config import LOCATION_FIELDS
from kernel_attention.data.prepare import fingerprint
from kernel_attention.data.sources import make_source
from kernel_attention.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]


def preset(name: str, **data_overrides: object) -> DataConfig:
    """A task preset from conf/task, resolved, with data.* overrides (as the entry points build it)."""
    cfg = OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml")
    for key, value in data_overrides.items():
        cfg.data[key] = value
    return DataConfig.from_task(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]


def spm_normalized(line: str) -> str:
    """What sentencepiece's default nmt_nfkc normaliser + whitespace folding make of a line."""
    return " ".join(unicodedata.normalize("NFKC", line).split())


def raw_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def write_parallel(folder: Path, n: int = 200, seed: int = 0) -> Path:
    """A small fairseq-style de/en corpus with all three splits."""
    rng = np.random.default_rng(seed)
    words = ["ein", "hund", "läuft", "die", "katze", "schläft", "a", "dog", "runs", "the", "cat", "sleeps", "über"]
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("valid", 20), ("test", 20)):
        for lang in ("de", "en"):
            lines = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(count)]
            (folder / f"{split}.{lang}").write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    return folder


def small_cfg(folder: Path, out: Path, **kw: object) -> DataConfig:
    params = {"task": "toy", "root": str(folder.parent), "path": folder.name, "out_root": str(out),
              "vocab_size": 40, "max_len": 64, **kw}
    return DataConfig.from_mapping(params)


# -- real corpora ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi30k(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    cfg = preset("multi30k", root=str(shared_data), vocab_size=1000)
    cfg.out_root = str(tmp_path_factory.mktemp("prepared"))
    return PreparedData(ensure_prepared(cfg))


def test_multi30k_round_trip_counts_and_meta(multi30k: PreparedData, shared_data: Path) -> None:
    tok, meta = multi30k.tokenizer, multi30k.meta
    for split, n in (("train", 29000), ("valid", 1014), ("test", 1000)):
        assert meta["splits"][split]["n"] == n
        for lang in ("de", "en"):
            lines = raw_lines(shared_data / "multi30k" / f"{split}.{lang}")
            arr = multi30k.tokens(split, lang)
            assert len(arr) == len(lines) == n
            assert arr.data.dtype == np.uint16 and arr.sizes.sum() == arr.num_tokens
            # every sentence, not a sample: decode(encode(text)) is the text up to NFKC + whitespace folding
            step = 1 if split != "train" else 7
            for i in range(0, n, step):
                assert tok.decode(arr[i]) == spm_normalized(lines[i]), (split, lang, i)
    assert multi30k.references("test") == raw_lines(shared_data / "multi30k" / "test.en")
    assert multi30k.references("valid") == raw_lines(shared_data / "multi30k" / "valid.en")
    assert meta["text_preprocessing"] == "raw" and "multi30k/dataset" in meta["source"]["origin"]
    assert meta["vocab"] == {"size": 1000, "pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert multi30k.vocab.size == tok.vocab_size == 1000
    sha = {(r["split"], r["lang"]): r["sha256"] for r in meta["sources"]}
    assert sha[("train", "de")] == "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"
    assert len(sha) == 6
    # ids are never pad/bos/eos inside a sentence (the collaters add BOS/EOS)
    train = multi30k.tokens("train", "en").data
    assert not np.isin(train, [0, 2, 3]).any()


def test_second_prepare_is_a_no_op(multi30k: PreparedData, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = preset("multi30k", root=str(shared_data), vocab_size=1000)
    cfg.out_root = str(multi30k.path.parents[1])
    before = (multi30k.path / "meta.json").stat().st_mtime_ns

    def must_not_run(*args: object) -> None:
        raise AssertionError("prepared again although nothing changed")

    monkeypatch.setattr(prepare_mod, "_prepare_into", must_not_run)
    assert ensure_prepared(cfg) == multi30k.path
    assert (multi30k.path / "meta.json").stat().st_mtime_ns == before


def test_tinyshakespeare_char_level_is_exact(shared_data: Path, tmp_path: Path) -> None:
    cfg = preset("tinyshakespeare", root=str(shared_data), out_root=str(tmp_path))
    data = PreparedData(ensure_prepared(cfg))
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)  # nanoGPT's split
    assert data.splits == ["train", "valid"]
    assert data.meta["char_level"] and data.vocab.size == 65 + 4
    for split, part in (("train", text[:cut]), ("valid", text[cut:])):
        stream = data.stream(split)
        assert len(stream) == len(part)  # one token per character, newlines included
        assert data.tokenizer.decode(stream) == part
        assert data.tokens(split).sizes.sum() == len(part)
    with pytest.raises(DataError, match="split 'test' is not in"):
        data.stream("test")


def test_iwslt_fairseq_folder_is_tokenized_lowercased(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "iwslt14"
    folder.mkdir()
    for split in ("valid", "test"):
        for lang in ("de", "en"):
            shutil.copy(shared_data / "iwslt14" / f"{split}.{lang}", folder / f"{split}.{lang}")
    for lang in ("de", "en"):  # the real train split is not staged here: valid stands in
        shutil.copy(shared_data / "iwslt14" / f"valid.{lang}", folder / f"train.{lang}")
    cfg = preset("iwslt", root=str(tmp_path), out_root=str(tmp_path / "out"), vocab_size=1000)
    data = PreparedData(ensure_prepared(cfg))
    meta = data.meta
    assert meta["text_preprocessing"] == "moses-tokenized+lowercased"
    assert meta["splits"]["valid"]["n"] == 7283 and meta["splits"]["test"]["n"] == 6750
    assert meta["filter"]["before"] == 7283 and meta["filter"]["after"] == meta["splits"]["train"]["n"]
    refs = raw_lines(shared_data / "iwslt14" / "test.en")
    assert data.references("test") == refs  # kept as shipped (&apos; escapes and all), every line, in order
    arr, tok = data.tokens("test", "en"), data.tokenizer
    exact = sum(tok.decode(arr[i]) == spm_normalized(refs[i]) for i in range(len(refs)))
    unk_lines = sum(bool((arr[i] == data.vocab.unk).any()) for i in range(len(refs)))
    assert exact + unk_lines >= len(refs)  # only characters unseen in "train" may fail to round-trip
    assert exact > 0.99 * len(refs)


# -- fingerprint and caching -------------------------------------------------------------------------------

# One changed value per output-affecting setting. The key check below fails when DataConfig gains a field that is
# not listed here, so a new setting cannot silently stay out of the fingerprint test.
CHANGED = {
    "task": "toy2", "type": "lm", "source": "hf", "src_lang": "fr", "tgt_lang": "de", "split_fractions": [0.8, 0.2],
    "hf_name": "x", "hf_revision": "abc", "hf_splits": {"train": "training"}, "hf_text_field": "sentence",
    "origin": "elsewhere", "text_preprocessing": "lowercased", "spm_model_type": "unigram", "vocab_size": 41,
    "character_coverage": 0.9995, "input_sentence_size": 1000, "spm_threads": 1, "spm_seed": 2,
    "max_sentence_length": 999, "min_len": 2, "max_len": 63, "max_len_ratio": 2.0,
}


def test_fingerprint_covers_every_setting_and_source_byte(tmp_path: Path) -> None:
    folder = write_parallel(tmp_path / "raw" / "toy")
    cfg = small_cfg(folder, tmp_path / "out")
    records = make_source(cfg).describe()
    base = fingerprint(cfg, records)
    settings = {f.name for f in dataclasses.fields(DataConfig)} - set(LOCATION_FIELDS) - {"path"}
    assert set(CHANGED) == settings
    seen = {base}
    for key, value in CHANGED.items():
        fp = fingerprint(dataclasses.replace(cfg, **{key: value}), records)
        assert fp not in seen, key
        seen.add(fp)
    # locations do not matter: the same bytes elsewhere give the same fingerprint
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    cfg_moved = dataclasses.replace(cfg, root=str(moved.parent), path=moved.name, out_root="x", obtain="hint")
    assert fingerprint(cfg_moved, make_source(cfg_moved).describe()) == base
    # one byte of one source file does
    data = bytearray((folder / "test.en").read_bytes())
    data[0] = ord("b") if data[0] != ord("b") else ord("c")
    (folder / "test.en").write_bytes(bytes(data))
    assert fingerprint(cfg, make_source(cfg).describe()) != base


def test_changed_setting_or_source_prepares_a_new_folder(tmp_path: Path) -> None:
    folder = write_parallel(tmp_path / "raw" / "toy")
    cfg = small_cfg(folder, tmp_path / "out")
    first = ensure_prepared(cfg)
    assert ensure_prepared(cfg) == first
    second = ensure_prepared(dataclasses.replace(cfg, max_len=5))
    assert second != first and second.parent == first.parent
    assert PreparedData(second).tokens("train", "de").sizes.max() <= 5
    with open(folder / "valid.en", "a", encoding="utf-8") as f, open(folder / "valid.de", "a", encoding="utf-8") as g:
        f.write("one more line\n")
        g.write("noch eine zeile\n")
    third = ensure_prepared(cfg)
    assert third not in (first, second) and PreparedData(third).meta["splits"]["valid"]["n"] == 21
    assert PreparedData(first).meta["splits"]["valid"]["n"] == 20  # never overwritten
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(p.name for p in (first, second, third))


def test_training_filters_report_and_valid_keeps_everything(tmp_path: Path) -> None:
    folder = write_parallel(tmp_path / "raw" / "toy", n=300)
    cfg = small_cfg(folder, tmp_path / "out", max_len=8, max_len_ratio=1.5)
    data = PreparedData(ensure_prepared(cfg))
    report = data.meta["filter"]
    src, tgt = data.tokens("train", "de").sizes, data.tokens("train", "en").sizes
    assert report["before"] == 300 and report["after"] == len(src) < 300
    assert src.max() <= 8 and tgt.max() <= 8 and src.min() >= 1
    assert (np.maximum(src, tgt) / np.minimum(src, tgt) <= 1.5).all()
    assert set(report["removed_by"]) == {"min_len=1", "max_len=8", "max_len_ratio=1.5"}
    assert len(data.tokens("valid", "de")) == 20 and len(data.references("valid")) == 20


# -- atomicity -------------------------------------------------------------------------------------------


def test_failure_mid_write_leaves_nothing_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_parallel(tmp_path / "raw" / "toy")
    cfg = small_cfg(folder, tmp_path / "out")
    calls = {"n": 0}
    real_write = prepare_mod.write_array

    def dying_write(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like Ctrl-C half way through the arrays
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prepare_mod, "write_array", dying_write)
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(cfg)
    task_dir = tmp_path / "out" / "toy"
    assert list(task_dir.iterdir()) == []
    monkeypatch.setattr(prepare_mod, "write_array", real_write)
    path = ensure_prepared(cfg)
    assert len(PreparedData(path).tokens("train", "en")) == 200


def test_killed_prepare_leftover_is_ignored_and_cleaned(tmp_path: Path) -> None:
    folder = write_parallel(tmp_path / "raw" / "toy")
    cfg = small_cfg(folder, tmp_path / "out")
    fp = fingerprint(cfg, make_source(cfg).describe())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists: the writer was SIGKILLed
    leftover = tmp_path / "out" / "toy" / f".tmp-{fp}-{dead.pid}-abcdef"
    leftover.mkdir(parents=True)
    (leftover / "spm.model").write_bytes(b"half")
    with pytest.raises(DataError, match=r"no meta\.json"):
        PreparedData(leftover)
    path = ensure_prepared(cfg)
    assert path.name == fp and not leftover.exists()
    assert PreparedData(path).meta["fingerprint"] == fp


# -- bad input -------------------------------------------------------------------------------------------


def test_missing_folder_and_split_name_the_file_and_the_fix(shared_data: Path, tmp_path: Path) -> None:
    cfg = preset("iwslt", root=str(shared_data), out_root=str(tmp_path))
    with pytest.raises(DataError, match=r"iwslt14/train\.de is missing .*prepare-iwslt14\.sh") as e:
        ensure_prepared(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"wikitext-2/train\.txt is missing .*2d84b35"):
        ensure_prepared(preset("wikitext2", root=str(shared_data), out_root=str(tmp_path)))
    with pytest.raises(DataError, match=r"data folder .*nowhere does not exist"):
        ensure_prepared(small_cfg(tmp_path / "nowhere", tmp_path))
    assert not any(tmp_path.glob("*/*"))


def test_parallel_line_count_mismatch(tmp_path: Path) -> None:
    folder = write_parallel(tmp_path / "raw" / "toy")
    with open(folder / "train.en", "a", encoding="utf-8") as f:
        f.write("extra\n")
    with pytest.raises(DataError, match=r"train\.de has 200 lines, .*train\.en has 201 lines"):
        ensure_prepared(small_cfg(folder, tmp_path / "out"))


def test_non_utf8_reports_file_and_line(tmp_path: Path) -> None:
    folder = write_parallel(tmp_path / "raw" / "toy")
    lines = raw_lines(folder / "valid.de")
    data = "".join(s + "\n" for s in lines[:4]).encode() + "caf\xe9\n".encode("latin-1")
    (folder / "valid.de").write_bytes(data + "".join(s + "\n" for s in lines[5:]).encode())
    with pytest.raises(DataError, match=r"valid\.de: line 5 is not valid UTF-8"):
        ensure_prepared(small_cfg(folder, tmp_path / "out"))


def test_empty_training_set_after_filtering_names_the_filters(tmp_path: Path) -> None:
    folder = write_parallel(tmp_path / "raw" / "toy")
    cfg = small_cfg(folder, tmp_path / "out", min_len=60, max_len=61)
    with pytest.raises(DataError, match=r"empty after filtering all 200 pairs \(min_len=60 removed 200, max_len=61 "):
        ensure_prepared(cfg)
    assert list((tmp_path / "out" / "toy").iterdir()) == []


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"vocab_size": "many"}, "vocab_size='many' must be of type int"),
        ({"vocabsize": 10}, "unknown option"),
        ({"type": "lm2"}, "type='lm2'"),
        ({"source": "file"}, "source=file"),
        ({"max_len_ratio": 0.5}, "max_len_ratio"),
        ({"spm_model_type": "word"}, "spm_model_type"),
        ({"type": "lm", "source": "file", "split_fractions": [0.9, 0.2]}, "split_fractions"),
    ],
)
def test_bad_settings_raise_config_error(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DataConfig.from_mapping({"task": "t", "path": "p", **params})


def test_script_prints_one_line_and_exits_3_for_missing_data(shared_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "KA_DATA_ROOT": str(shared_data)}
    cmd = [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "task=iwslt", f"task.data.out_root={tmp_path}"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3  # kernel_attention.cli: data errors
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert res.stderr.startswith("prepare_data: data error:") and "train.de is missing" in res.stderr
    assert list(tmp_path.iterdir()) == []  # hydra wrote no outputs/ or .hydra/ into the working directory


# -- hub source (datasets faked: no network here) ----------------------------------------------------------


def test_hf_source_through_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {"train": [" = A = \n", " the cat sat \n", "\n"] * 30, "validation": [" the cat \n"], "test": [" b \n"]}
    calls: list[tuple] = []

    class FakeSplit(dict):
        @property
        def column_names(self) -> list[str]:
            return list(self)

    def load_dataset(path: str, name: str | None = None, split: str = "", revision: str | None = None) -> FakeSplit:
        calls.append((path, name, split))
        return FakeSplit(text=rows[split])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    cfg = DataConfig.from_mapping({"task": "wt", "type": "lm", "source": "hf", "path": "Salesforce/wikitext",
                                   "hf_name": "wikitext-2-v1", "vocab_size": 20, "out_root": str(tmp_path)})
    data = PreparedData(ensure_prepared(cfg))
    assert ("Salesforce/wikitext", "wikitext-2-v1", "validation") in calls
    assert data.meta["sources"][0]["hf"] == "Salesforce/wikitext" and len(data.meta["sources"]) == 3
    lines = data.tokens("train")
    assert len(lines) == 90 and all(lines[i][-1] == data.vocab.eos for i in range(len(lines)))
    assert data.tokenizer.decode(data.tokens("valid")[0]) == "the cat"


def test_importing_the_data_package_does_not_import_datasets_or_torch() -> None:
    code = "import sys, kernel_attention.data as d; assert 'datasets' not in sys.modules; " \
           "assert 'torch' not in sys.modules; d.collate_lm; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_meta_is_valid_json_with_the_documented_keys(multi30k: PreparedData) -> None:
    meta = json.loads((multi30k.path / "meta.json").read_text(encoding="utf-8"))
    for key in ("task", "type", "fingerprint", "langs", "vocab", "dtype", "splits", "sources",
                "text_preprocessing", "spm", "filter"):
        assert key in meta, key
    assert meta["fingerprint"] == multi30k.path.name
