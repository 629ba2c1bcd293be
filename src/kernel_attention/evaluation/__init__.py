"""Evaluation: beam search (``generate``), BLEU/chrF (``bleu``), perplexity (``lm``), their options (``options``)
and ``evaluate_run`` (``evaluate``), which scores a run folder through its task.

Two layers share this package: the helpers sit below the tasks (the tasks score with them), ``evaluate_run``
above them (it builds the run's task). ``evaluate_run`` and ``EvaluationError`` are therefore loaded on first
access, so that importing a helper — the tasks, or the report reading ``bleu`` — never imports the tasks back.
Nothing here imports ``training``: the run-folder files both use live in ``kernel_attention.store``.
"""

from typing import Any

__all__ = ["EvaluationError", "evaluate_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kernel_attention.evaluation import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'kernel_attention.evaluation' has no attribute {name!r}")
