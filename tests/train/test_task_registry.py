"""Task registry errors, and the detect task claiming every registered detector."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from torch import nn

import lowbit.detection.registry as det_registry
import lowbit.train.tasks as tasks_mod
from lowbit.config import ModelConfig
from lowbit.detection import list_models, register_model
from lowbit.tasks.detect import DetectTask
from lowbit.train.tasks import get_task, list_tasks, register_task, task_for_model


class _ToyTask:
    name = "toy-task"
    model_names = ("toy-net",)

    def build_model(self, cfg: object) -> nn.Module:
        return nn.Identity()

    build_datasets = collate_fn = train_step_loss = evaluate = build_model


@pytest.fixture
def scratch_tasks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made in the test land in a copy of the task registry, dropped after."""
    list_tasks()  # load the built-in tasks first
    monkeypatch.setattr(tasks_mod, "_REGISTRY", tasks_mod._REGISTRY.copy())
    yield


@pytest.fixture
def scratch_detectors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Detectors registered in the test land in copies of the detection registry's tables."""
    list_models()  # load the built-in detectors first
    monkeypatch.setattr(det_registry, "_MODELS", det_registry._MODELS.copy())
    monkeypatch.setattr(det_registry, "_SIZE_OPTIONS", dict(det_registry._SIZE_OPTIONS))
    yield


@pytest.mark.usefixtures("scratch_tasks")
def test_unknown_task_names_the_value_and_every_known_task() -> None:
    register_task("toy-task")(_ToyTask)
    known = list_tasks()
    assert {"classify-digits", "detect", "toy-task"} <= set(known)
    with pytest.raises(ValueError) as e:
        get_task("no-such-task")
    msg = str(e.value)
    assert "'no-such-task'" in msg
    assert all(re.search(rf"\b{re.escape(k)}\b", msg) for k in known), msg
    assert msg.endswith("; known: " + ", ".join(known))
    # a name that is not a str is the same error, not a TypeError from the dict lookup
    for bad in (["detect"], None, 3):
        with pytest.raises(ValueError, match=rf"{re.escape(repr(bad))}: unknown task.*toy-task"):
            get_task(bad)  # type: ignore[arg-type]
    # and model.name no task claims lists the tasks too
    with pytest.raises(ValueError, match=r"'nothing-claims-me'.*classify-digits, detect, toy-task"):
        task_for_model(ModelConfig("nothing-claims-me"))
    assert isinstance(task_for_model(ModelConfig("toy-net")), _ToyTask)


@pytest.mark.usefixtures("scratch_tasks")
def test_registration_errors() -> None:
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="non-empty str"):
            register_task(bad)  # type: ignore[arg-type]
    register_task("toy-task")(_ToyTask)
    with pytest.raises(ValueError, match="'toy-task' is already registered"):
        register_task("toy-task")(_ToyTask)
    with pytest.raises(ValueError, match=r"'lowbit\.nowhere:X': cannot import"):
        get_task("lowbit.nowhere:X")
    register_task("half-task")(lambda: object())
    with pytest.raises(ValueError, match="'half-task' lacks build_model, build_datasets"):
        get_task("half-task")


def test_registry_cleanup_left_the_builtins_alone() -> None:
    assert "toy-task" not in list_tasks() and "half-task" not in list_tasks()
    assert {"classify-digits", "detect"} <= set(list_tasks())


def test_detect_claims_exactly_the_registered_detectors() -> None:
    names = tuple(list_models())
    assert DetectTask.model_names == DetectTask().model_names == names
    assert {"rfcn_resnet18", "faster_rcnn_resnet50", "ssd300_vgg16", "yolov3_tiny_darknet"} \
        <= set(names)
    for n in names:
        assert isinstance(task_for_model(ModelConfig(n)), DetectTask)


@pytest.mark.usefixtures("scratch_detectors")
def test_a_newly_registered_detector_is_claimed_by_detect() -> None:
    task = DetectTask()  # made before the registration: still sees it
    assert "toy_detector" not in task.model_names
    register_model("toy_detector", size_option=None)(lambda num_classes, **kw: nn.Identity())
    assert "toy_detector" in task.model_names and "toy_detector" in DetectTask.model_names
    assert DetectTask.model_names == tuple(list_models())
    assert isinstance(task_for_model(ModelConfig("toy_detector")), DetectTask)


def test_detector_registration_was_cleaned_up() -> None:
    assert "toy_detector" not in list_models()
    assert "toy_detector" not in DetectTask.model_names
    with pytest.raises(ValueError, match="no task claims"):
        task_for_model(ModelConfig("toy_detector"))
