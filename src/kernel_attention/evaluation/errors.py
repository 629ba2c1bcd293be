"""The error of scoring a run folder, in a leaf module: the shared error path (``cli``) names it without importing
``evaluate_run`` and, through it, the tasks."""


class EvaluationError(ValueError):
    """The run folder or the options cannot be evaluated. The message is one line and names the fix."""
