"""Sharded resumable sampler, task registry, the sklearn-digits split."""

from __future__ import annotations

import pytest
import torch

from lowbit.config import ModelConfig
from lowbit.tasks.digits import ClassifyDigitsTask, load_sklearn_digits
from lowbit.train.sampler import ResumableShardedSampler
from lowbit.train.tasks import get_task, list_tasks, register_task, task_for_model


def _batches(s: ResumableShardedSampler) -> list[list[int]]:
    idx = list(s)
    return [idx[i : i + s.per_rank] for i in range(0, len(idx), s.per_rank)]


def test_ranks_together_see_the_single_process_batches() -> None:
    one = ResumableShardedSampler(103, 12, seed=4)
    one.set_epoch(2)
    ref = _batches(one)
    assert len(ref) == 103 // 12 == one.batches_per_epoch and len(one) == 8 * 12
    parts = []
    for r in range(3):
        s = ResumableShardedSampler(103, 12, seed=4, rank=r, world_size=3)
        s.set_epoch(2)
        parts.append(_batches(s))
    for b, batch in enumerate(ref):
        assert sum((p[b] for p in parts), []) == batch


def test_order_depends_on_seed_and_epoch_and_resumes_mid_epoch() -> None:
    s = ResumableShardedSampler(50, 10, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(50))
    s.set_epoch(1, start_batch=3)
    assert list(s) == e1[30:] and len(s) == 20
    t = ResumableShardedSampler(50, 10, seed=2)
    assert list(t) != e0


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        ResumableShardedSampler(100, 10, world_size=3, rank=0)
    with pytest.raises(ValueError, match="exceeds the training set"):
        ResumableShardedSampler(5, 10)


def test_registry() -> None:
    assert "classify-digits" in list_tasks()
    assert isinstance(get_task("classify-digits"), ClassifyDigitsTask)
    assert isinstance(task_for_model(ModelConfig("digits-cnn")), ClassifyDigitsTask)
    assert isinstance(get_task("lowbit.tasks.digits:ClassifyDigitsTask"),
                      ClassifyDigitsTask)
    with pytest.raises(ValueError, match="already registered"):
        register_task("classify-digits")(ClassifyDigitsTask)
    with pytest.raises(ValueError, match="'nope'.*classify-digits"):
        get_task("nope")
    with pytest.raises(ValueError, match="no task claims"):
        task_for_model(ModelConfig("resnet-9000"))
    with pytest.raises(ValueError, match="lacks"):
        get_task("builtins:object")


def test_digits_split_is_fixed_and_disjoint() -> None:
    tr, te = load_sklearn_digits()
    assert len(tr) == 1438 and len(te) == 359
    tr2, te2 = load_sklearn_digits()
    assert torch.equal(te.tensors[0], te2.tensors[0])
    assert tr.tensors[0].shape[1:] == (1, 8, 8) and float(tr.tensors[0].max()) <= 1.0
    flat_tr = {tuple(x.flatten().tolist()) for x in tr.tensors[0]}
    overlap = sum(tuple(x.flatten().tolist()) in flat_tr for x in te.tensors[0])
    assert overlap < 5  # sklearn's digits hold a few exact duplicates
    assert torch.bincount(te.tensors[1]).min() >= 35  # stratified
