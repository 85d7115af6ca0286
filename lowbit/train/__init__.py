"""lowbit.train: the generic training engine (tasks, loop, checkpoints, resume, DDP, schedules).

    from lowbit.config import load_config
    from lowbit.train import fit, evaluate_checkpoint

    result = fit(load_config("configs/digits_cnn.yaml"), "runs/digits")
    print(result.metrics["main"], evaluate_checkpoint("runs/digits").metrics["main"])

New tasks register with :func:`register_task` (see :mod:`lowbit.train.tasks`).
"""

from lowbit.train.checkpoint import (
    Checkpoint,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lowbit.train.distributed import DistContext, init_distributed
from lowbit.train.engine import (
    EvalResult,
    RunResult,
    Trainer,
    TrainingDiverged,
    apply_quantization,
    build_model,
    evaluate_checkpoint,
    evaluate_model,
    fit,
    warm_start,
)
from lowbit.train.lock import RunLock, RunLockedError
from lowbit.train.sampler import ResumableShardedSampler
from lowbit.train.schedules import LRSchedule
from lowbit.train.tasks import Task, get_task, list_tasks, register_task, task_for_model

__all__ = [
    "Checkpoint",
    "DistContext",
    "EvalResult",
    "LRSchedule",
    "ResumableShardedSampler",
    "RunLock",
    "RunLockedError",
    "RunResult",
    "Task",
    "Trainer",
    "TrainingDiverged",
    "apply_quantization",
    "build_model",
    "evaluate_checkpoint",
    "evaluate_model",
    "find_latest_checkpoint",
    "fit",
    "get_task",
    "init_distributed",
    "list_checkpoints",
    "list_tasks",
    "load_checkpoint",
    "register_task",
    "save_checkpoint",
    "task_for_model",
    "warm_start",
]
