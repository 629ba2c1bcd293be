"""The options of test-time evaluation, shared by ``evaluate_run`` and the tasks that implement it.

One dataclass for every task type: each task reads the options that mean something to it (translation: beam
search and batching; LM: the sliding-window stride and batching) — as ``conf/evaluate.yaml`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalOptions:
    # Translation: beam search (fairseq's rules); max length = max_len_a * src_len + max_len_b (None = the task's).
    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float | None = None
    max_len_b: int | None = None
    no_unk: bool = False
    use_cache: bool = True
    # Batching: source tokens per batch (None = the run's task.max_tokens) and sentences per batch.
    max_tokens: int | None = None
    batch_size: int = 128
    # LM: sliding-window stride (None = the window, i.e. disjoint blocks).
    lm_stride: int | None = None


@dataclass
class TestSet:
    """A test set given on the command line (``test_sets.<name>.src=... test_sets.<name>.ref=...``).

    Translation: ``src`` (source sentences, one per line) and ``ref`` (references, aligned), raw text in the
    corpus's own form; or ``sacrebleu`` (a sacreBLEU test set name such as ``wmt14``, with ``langpair``
    defaulting to the run's languages), which sacreBLEU downloads on a machine that is online. LM: ``src``
    alone, a text file scored for perplexity."""

    __test__ = False  # not a pytest class

    src: str | None = None
    ref: str | None = None
    sacrebleu: str | None = None
    langpair: str | None = None
