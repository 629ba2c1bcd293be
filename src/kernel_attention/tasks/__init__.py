"""Tasks: the registered task types (translation, lm), each with its own typed config and behaviour."""

from kernel_attention.tasks.base import TASKS, Task, TaskConfig, build_task, make_task_config, task_class
from kernel_attention.tasks.lm import LanguageModelingTask, LMConfig
from kernel_attention.tasks.losses import label_smoothed_nll, linear_label_smoothed_nll
from kernel_attention.tasks.translation import TranslationConfig, TranslationTask

__all__ = ["TASKS", "LMConfig", "LanguageModelingTask", "Task", "TaskConfig", "TranslationConfig",
           "TranslationTask", "build_task", "label_smoothed_nll", "linear_label_smoothed_nll", "make_task_config",
           "task_class"]
