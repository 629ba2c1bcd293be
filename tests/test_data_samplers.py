"""Batch samplers, datasets and collaters: token budget, coverage, shuffling, DDP shards, mid-epoch resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kernel_attention.data import (
    DataConfig,
    DataError,
    LMBatchSampler,
    LMBlockDataset,
    PreparedData,
    TokenBatchSampler,
    TranslationDataset,
    collate_lm,
    collate_translation,
    ensure_prepared,
)


@pytest.fixture(scope="module")
def sizes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    src = rng.integers(1, 120, size=3000)
    tgt = np.clip(src + rng.integers(-10, 10, size=3000), 1, None)
    return src, tgt


def padded_cost(batch: list[int], src: np.ndarray, tgt: np.ndarray) -> int:
    return len(batch) * int(np.maximum(src[batch], tgt[batch]).max() + 1)


def test_token_budget_and_exact_coverage(sizes: tuple[np.ndarray, np.ndarray]) -> None:
    src, tgt = sizes
    sampler = TokenBatchSampler(src, tgt, max_tokens=1024, max_sentences=40, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert max(padded_cost(b, src, tgt) for b in batches) <= 1024
        assert max(len(b) for b in batches) <= 40
        flat = np.concatenate(batches)
        assert len(flat) == len(src) and np.array_equal(np.sort(flat), np.arange(len(src)))
        # packing works: batches are mostly full, not one sentence each
        assert np.mean([padded_cost(b, src, tgt) for b in batches]) > 0.8 * 1024


def test_order_depends_on_seed_and_epoch_only(sizes: tuple[np.ndarray, np.ndarray]) -> None:
    src, tgt = sizes
    a, b = TokenBatchSampler(src, tgt, 2048, seed=1), TokenBatchSampler(src, tgt, 2048, seed=1)
    e0 = list(a)
    assert e0 == list(b)  # deterministic
    a.set_epoch(1)
    e1 = list(a)
    assert e0 != e1 and sorted(map(tuple, e0)) != sorted(map(tuple, e1))  # order and composition change
    assert list(TokenBatchSampler(src, tgt, 2048, seed=2)) != e0
    ordered = list(TokenBatchSampler(src, tgt, 2048, shuffle=False))
    lengths = [int(np.maximum(src[bt], tgt[bt]).max()) for bt in ordered]
    assert lengths == sorted(lengths)


@pytest.mark.parametrize("make", ["tokens", "lm"])
def test_resume_mid_epoch_gives_the_identical_remaining_order(make: str, sizes: tuple[np.ndarray, np.ndarray]) -> None:
    def new() -> TokenBatchSampler | LMBatchSampler:
        if make == "tokens":
            return TokenBatchSampler(*sizes, max_tokens=1500, seed=7, num_replicas=2, rank=1)
        return LMBatchSampler(1001, batch_size=8, seed=7, num_replicas=2, rank=1)

    full = new()
    full.set_epoch(2)
    expected = list(full)
    run = new()
    run.set_epoch(2)
    it = iter(run)
    head = [next(it) for _ in range(5)]
    state = run.state_dict()
    resumed = new()
    resumed.load_state_dict(state)
    assert head + list(resumed) == expected
    # with a prefetching DataLoader the trainer says how many batches it really consumed
    state = run.state_dict(batches_done=3)
    again = new()
    again.load_state_dict(state)
    assert head[:3] + list(again) == expected
    with pytest.raises(DataError, match="seed"):
        again.load_state_dict({**state, "seed": 8})


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_ddp_shards_are_disjoint_equal_and_complete(replicas: int, sizes: tuple[np.ndarray, np.ndarray]) -> None:
    src, tgt = sizes
    shards = []
    for rank in range(replicas):
        s = TokenBatchSampler(src, tgt, max_tokens=2000, seed=5, num_replicas=replicas, rank=rank)
        s.set_epoch(4)
        shards.append(list(s))
    assert len({len(s) for s in shards}) == 1  # equal batch counts or DDP hangs
    per_rank = [np.concatenate(s) for s in shards]
    everything = np.concatenate(per_rank)
    assert len(everything) == len(src) and len(np.unique(everything)) == len(src)
    assert max(padded_cost(b, src, tgt) for s in shards for b in s) <= 2000
    lm = [list(LMBatchSampler(103, 4, seed=0, num_replicas=replicas, rank=r)) for r in range(replicas)]
    assert len({len(s) for s in lm}) == 1
    assert sorted(np.concatenate([np.concatenate(s) for s in lm]).tolist()) == list(range(103))


def test_sentence_longer_than_budget_and_bad_rank_fail_clearly(sizes: tuple[np.ndarray, np.ndarray]) -> None:
    src, tgt = sizes
    with pytest.raises(DataError, match=r"sentence\(s\) need more than max_tokens=50"):
        TokenBatchSampler(src, tgt, max_tokens=50)
    with pytest.raises(ValueError, match="rank=2"):
        TokenBatchSampler(src, tgt, max_tokens=5000, num_replicas=2, rank=2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("raw")
    folder = root / "toy"
    folder.mkdir()
    rng = np.random.default_rng(1)
    words = ["ein", "hund", "die", "katze", "a", "dog", "the", "cat"]
    for split, n in (("train", 120), ("valid", 10), ("test", 10)):
        for lang in ("de", "en"):
            text = "".join(" ".join(rng.choice(words, size=rng.integers(1, 9))) + "\n" for _ in range(n))
            (folder / f"{split}.{lang}").write_text(text, encoding="utf-8")
    cfg = DataConfig.from_mapping({"task": "toy", "root": str(root), "path": "toy", "vocab_size": 30,
                                   "out_root": str(tmp_path_factory.mktemp("out"))})
    return PreparedData(ensure_prepared(cfg))


def test_translation_dataloader_collate(toy: PreparedData) -> None:
    ds = TranslationDataset(toy, "train")
    sampler = TokenBatchSampler(ds.src_sizes, ds.tgt_sizes, max_tokens=64, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_translation)
    seen = []
    v = toy.vocab
    for batch in loader:
        B, T = batch["target"].shape
        assert batch["src_tokens"].numel() <= 64 and B * T <= 64
        assert (batch["prev_output_tokens"][:, 0] == v.bos).all()
        assert batch["ntokens"] == int((batch["target"] != v.pad).sum())
        for row, i in enumerate(batch["id"].tolist()):
            src, tgt = ds[i]["source"], ds[i]["target"]
            n, m = len(src), len(tgt)
            assert batch["src_tokens"][row, :n].tolist() == src.tolist()
            assert batch["src_tokens"][row, n] == v.eos and (batch["src_tokens"][row, n + 1 :] == v.pad).all()
            assert batch["src_lengths"][row] == n + 1
            assert batch["target"][row, : m + 1].tolist() == [*tgt.tolist(), v.eos]
            assert batch["prev_output_tokens"][row, : m + 1].tolist() == [v.bos, *tgt.tolist()]
            assert (batch["target"][row, m + 1 :] == v.pad).all()
        seen += batch["id"].tolist()
    assert sorted(seen) == list(range(len(ds)))


def test_lm_blocks_cover_every_target_once_and_collate() -> None:
    stream = np.arange(4, 4 + 1000, dtype=np.uint16)  # stand-in for a memory-mapped token stream
    ds = LMBlockDataset(stream, block_size=64)
    assert len(ds) == 16  # ceil(999 / 64): the short last block is kept for exact evaluation
    targets = np.concatenate([ds[i][1:] for i in range(len(ds))])
    assert np.array_equal(targets, stream[1:])
    assert len(LMBlockDataset(stream, 64, drop_last=True)) == 15
    sampler = LMBatchSampler(len(ds), batch_size=5, seed=0)
    batches = list(sampler)
    sampler.set_epoch(1)
    assert batches != list(sampler)
    batch = collate_lm([ds[i] for i in batches[0]] + [ds[15]])
    assert batch["tokens"].shape == batch["target"].shape == (len(batches[0]) + 1, 64)
    assert torch.equal(batch["tokens"][:-1, 1:], batch["target"][:-1, :-1])  # full rows: target = shifted input
    assert batch["ntokens"] == 64 * len(batches[0]) + (999 - 15 * 64)
    last = batch["target"][-1]
    assert (last[999 - 15 * 64 :] == 0).all() and (last[: 999 - 15 * 64] != 0).all()
    first = ds[batches[0][0]]
    assert batch["tokens"][0].tolist() == first[:-1].tolist() and batch["target"][0].tolist() == first[1:].tolist()


def test_prepared_lm_stream_feeds_blocks(tmp_path: Path) -> None:
    text = "".join(f"line {i} of the toy corpus\n" for i in range(300))
    (tmp_path / "toy.txt").write_text(text, encoding="utf-8")
    cfg = DataConfig.from_mapping({"task": "toylm", "type": "lm", "source": "file", "root": str(tmp_path),
                                   "path": "toy.txt", "vocab_size": 40, "out_root": str(tmp_path / "out")})
    data = PreparedData(ensure_prepared(cfg))
    stream = data.stream("train")
    assert stream.dtype == np.uint16 and (stream == data.vocab.eos).sum() == data.meta["splits"]["train"]["n"]
    ds = LMBlockDataset(stream, 32)
    batch = collate_lm([ds[i] for i in range(len(ds))])
    assert batch["ntokens"] == len(stream) - 1
