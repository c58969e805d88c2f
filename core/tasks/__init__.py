"""The task layer: one object per fine-tuning task behind :class:`~unimae.core.tasks.base.Task`, and their registry.

::

    from unimae.core.tasks import get_task, TASKS
    task = get_task("segment")          # raises InputError naming the tasks for an unknown name
    probs = task.infer(model, sample.image, sample.valid, input_size=(224, 224))

``TASKS`` holds the names in registry order (classify, segment, anomaly); :func:`all_tasks` the objects.
A fourth task is a module here with a :class:`Task` subclass, registered in ``_REGISTRY`` below.
Importing this package is free of torch (see :mod:`unimae.core.tasks.base`).
"""

from __future__ import annotations

from unimae.core.errors import look_up
from unimae.core.tasks.anomaly import ANOMALY_SETTINGS, AnomalyTask
from unimae.core.tasks.base import Task
from unimae.core.tasks.classify import ClassifyTask, mixup_draw
from unimae.core.tasks.segment import SegmentTask

__all__ = [
    "Task",
    "TASKS",
    "get_task",
    "all_tasks",
    "app_order",
    "ClassifyTask",
    "SegmentTask",
    "AnomalyTask",
    "ANOMALY_SETTINGS",
    "mixup_draw",
]

_REGISTRY: dict[str, Task] = {t.name: t for t in (ClassifyTask(), SegmentTask(), AnomalyTask())}
#: the task names, in registry order
TASKS: tuple[str, ...] = tuple(_REGISTRY)


def get_task(task: str | Task) -> Task:
    """The task object for a name (a :class:`Task` is returned as is); an unknown name raises
    :class:`~unimae.core.errors.InputError` listing the known ones (close misspellings suggested)."""
    if isinstance(task, Task):
        return task
    return _REGISTRY[look_up(task, TASKS, what="task")]


def all_tasks() -> tuple[Task, ...]:
    """Every registered task, in registry order."""
    return tuple(_REGISTRY.values())


def app_order() -> tuple[Task, ...]:
    """The tasks in the app's tab order (:attr:`Task.app_rank`)."""
    return tuple(sorted(_REGISTRY.values(), key=lambda t: t.app_rank))
