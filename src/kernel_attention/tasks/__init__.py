"""Tasks: the fairseq-like interface between the training loop and a kind of data (translation, lm)."""

from kernel_attention.tasks.base import TASKS, Task, build_task
from kernel_attention.tasks.lm import LanguageModelingTask
from kernel_attention.tasks.losses import label_smoothed_nll, linear_label_smoothed_nll
from kernel_attention.tasks.translation import TranslationTask

__all__ = ["TASKS", "LanguageModelingTask", "Task", "TranslationTask", "build_task", "label_smoothed_nll",
           "linear_label_smoothed_nll"]
