"""Batch samplers (pure numpy; pass them to ``DataLoader(batch_sampler=...)``).

Both samplers share one mechanism (``ShardedBatchSampler``):

- an epoch's batches are a deterministic function of ``(seed, epoch)``, so every DDP rank computes the same list;
- the batch count is made a multiple of ``num_replicas`` by splitting the largest batches (never by duplicating
  items), so ranks get equal batch counts *and* disjoint shards that cover every item — DDP would hang if one rank
  ran out of batches first;
- batch order is shuffled from ``(seed, epoch)`` and rank ``r`` takes every ``num_replicas``-th batch;
- ``state_dict()`` records ``(epoch, batches handed out)``; ``load_state_dict`` resumes the exact remaining order.

Call ``set_epoch(e)`` before each epoch (as with ``DistributedSampler``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from kernel_attention.data.config import DataError
from kernel_attention.registry import ConfigError


def _split_to_multiple(batches: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Split the largest batches in two until ``len(batches) % k == 0`` (sizes only shrink: limits still hold)."""
    batches = list(batches)
    while len(batches) % k:
        i = max(range(len(batches)), key=lambda j: len(batches[j]))
        b = batches[i]
        if len(b) < 2:
            raise DataError(f"cannot split {len(batches)} single-item batches evenly over {k} replicas; "
                            "use more data or fewer replicas")
        half = len(b) // 2
        batches[i : i + 1] = [b[:half], b[half:]]
    return batches


class ShardedBatchSampler:
    """Base: subclasses implement ``_global_batches(epoch)`` (all ranks' batches, before sharding)."""

    def __init__(self, *, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"sampler: rank={rank} must be in [0, num_replicas={num_replicas})")
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._consumed = 0  # batches of this epoch already handed out on this rank
        self._plan_cache: tuple[int, list[np.ndarray]] | None = None

    def _global_batches(self, epoch: int) -> list[np.ndarray]:
        raise NotImplementedError

    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, stream])

    def _plan(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch, in order (cached per epoch)."""
        if self._plan_cache is None or self._plan_cache[0] != self.epoch:
            batches = _split_to_multiple(self._global_batches(self.epoch), self.num_replicas)
            order = self._rng(self.epoch, 0).permutation(len(batches)) if self.shuffle else np.arange(len(batches))
            mine = [batches[i] for i in order[self.rank :: self.num_replicas]]
            self._plan_cache = (self.epoch, mine)
        return self._plan_cache[1]

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (a different epoch restarts from its first batch)."""
        if epoch != self.epoch:
            self.epoch, self._consumed = int(epoch), 0

    def __len__(self) -> int:
        return len(self._plan())

    def __iter__(self) -> Iterator[list[int]]:
        plan = self._plan()
        if self._consumed >= len(plan):
            self._consumed = 0  # iterating a finished epoch again replays it (no set_epoch was called)
        while self._consumed < len(plan):
            batch = plan[self._consumed]
            self._consumed += 1
            yield batch.tolist()

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Resume point. ``batches_done``: how many batches of this epoch the trainer actually consumed — pass it
        when a DataLoader prefetches (num_workers > 0), since the sampler has then handed out more than that."""
        done = self._consumed if batches_done is None else int(batches_done)
        return {"epoch": self.epoch, "consumed": done, "seed": self.seed, "num_replicas": self.num_replicas,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next ``__iter__`` yields exactly the batches not yet consumed."""
        for key in ("seed", "num_replicas", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(f"sampler state has {key}={state[key]!r} but this sampler has "
                                f"{getattr(self, key)!r}; resume with the same setting")
        self.epoch, self._consumed = int(state["epoch"]), int(state["consumed"])


class TokenBatchSampler(ShardedBatchSampler):
    """Translation batches of similar-length sentences with at most ``max_tokens`` padded tokens.

    A sentence's size is ``max(len(src), len(tgt)) + 1``: the collated source gets EOS, the decoder input BOS and
    the target EOS. A batch's padded size is ``max size in batch × batch size`` (fairseq's ``max_tokens``).
    Within each epoch sentences of equal size are shuffled before packing, so batch composition varies too.
    """

    def __init__(
        self,
        src_sizes: Sequence[int] | np.ndarray,
        tgt_sizes: Sequence[int] | np.ndarray | None,
        max_tokens: int,
        *,
        max_sentences: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank)
        src = np.asarray(src_sizes, dtype=np.int64)
        tgt = src if tgt_sizes is None else np.asarray(tgt_sizes, dtype=np.int64)
        if len(src) != len(tgt):
            raise DataError(f"sampler: {len(src)} source sizes but {len(tgt)} target sizes")
        if len(src) == 0:
            raise DataError("sampler: no sentences to batch")
        if max_tokens < 1 or (max_sentences is not None and max_sentences < 1):
            raise ConfigError(f"sampler: max_tokens={max_tokens} and max_sentences={max_sentences} must be ≥ 1")
        self.sizes = np.maximum(src, tgt) + 1
        too_long = int((self.sizes > max_tokens).sum())
        if too_long:
            raise DataError(f"sampler: {too_long} sentence(s) need more than max_tokens={max_tokens} tokens "
                            f"(longest {int(self.sizes.max())}); raise max_tokens or lower data.max_len")
        self.max_tokens, self.max_sentences = int(max_tokens), max_sentences

    def _global_batches(self, epoch: int) -> list[np.ndarray]:
        if self.shuffle:
            perm = self._rng(epoch, 1).permutation(len(self.sizes))
            order = perm[np.argsort(self.sizes[perm], kind="stable")]
        else:
            order = np.argsort(self.sizes, kind="stable")
        sizes = self.sizes[order]
        cap = self.max_sentences or len(order)
        batches, start = [], 0
        # Sizes ascend, so a batch's padded cost is (count) × (size of its last sentence).
        for j in range(len(order)):
            count = j - start + 1
            if count * int(sizes[j]) > self.max_tokens or count > cap:
                batches.append(order[start:j])
                start = j
        batches.append(order[start:])
        return batches


class LMBatchSampler(ShardedBatchSampler):
    """Batches of ``batch_size`` block indices (see ``LMBlockDataset``), blocks shuffled per epoch."""

    def __init__(
        self,
        num_blocks: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank)
        if num_blocks < 1 or batch_size < 1:
            raise DataError(f"sampler: num_blocks={num_blocks} and batch_size={batch_size} must be ≥ 1 "
                            "(is the split shorter than one block?)")
        self.num_blocks, self.batch_size = int(num_blocks), int(batch_size)

    def _global_batches(self, epoch: int) -> list[np.ndarray]:
        order = self._rng(epoch, 1).permutation(self.num_blocks) if self.shuffle else np.arange(self.num_blocks)
        return [order[i : i + self.batch_size] for i in range(0, self.num_blocks, self.batch_size)]
