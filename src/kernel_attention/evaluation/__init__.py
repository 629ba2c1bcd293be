"""Evaluation: decoding the test set and scoring it (BLEU, perplexity).

``evaluate_run`` is loaded on first access: it pulls in data and training code, which importing
``kernel_attention.evaluation.bleu`` (the report) must not, and training imports this package too.
"""

from typing import Any

__all__ = ["EvaluationError", "evaluate_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kernel_attention.evaluation import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'kernel_attention.evaluation' has no attribute {name!r}")
