"""Tasks: how a batch becomes a loss and metric sums, and what evaluation measures.

Tasks do not fork the training loop (``train/trainer.py`` is the one loop, and it knows no metric of its own).
The protocol is ``base.Task`` (its docstring lists every member); ``classification``, ``adversarial`` and
``language_model`` are the suite's tasks; ``registry.build_task`` builds the one a ``task`` config names, by ``task.name`` or by
``task._target_`` for a user's own task (docs/extending.md, "Adding a task").
"""

from adamp_repro.train.tasks.adversarial import AdversarialTask, build_adversarial_task
from adamp_repro.train.tasks.base import Task, TaskBase, classifier_sums, classifier_train_metrics
from adamp_repro.train.tasks.classification import ClassificationTask, build_classification_task
from adamp_repro.train.tasks.language_model import LanguageModelTask, build_language_model_task
from adamp_repro.train.tasks.registry import TASKS, build_task

__all__ = [
    "TASKS",
    "AdversarialTask",
    "ClassificationTask",
    "LanguageModelTask",
    "Task",
    "TaskBase",
    "build_adversarial_task",
    "build_classification_task",
    "build_language_model_task",
    "build_task",
    "classifier_sums",
    "classifier_train_metrics",
]
