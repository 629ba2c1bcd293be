"""Evaluation: beam search (``generate``), BLEU/chrF (``bleu``), perplexity (``lm``), their options (``options``)
and ``evaluate_run`` (``evaluate``), which scores a run folder through its task.

Two layers share this package: the helpers sit below the tasks (the tasks score with them), ``evaluate.py`` above
them (it builds the run's task). So this file imports nothing: importing a helper — the tasks, or the report
reading ``bleu`` — never imports the tasks back. Import ``evaluate_run`` from ``kernel_attention.evaluation.evaluate``
and ``EvaluationError`` from ``kernel_attention.evaluation.errors`` (a leaf). Nothing here imports ``training``: the
run-folder files both use live in ``kernel_attention.store``.
"""
