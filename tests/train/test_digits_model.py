"""The one digits CNN and the one sklearn-digits loader (lowbit.tasks.digits), used by the
``classify-digits`` task and by the benchmarks (lowbit.bench.digits, bench_per_channel)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.bench.digits import LAYOUT, SPLIT, bench_split
from lowbit.tasks.digits import DigitsCNN, load_sklearn_digits
from lowbit.train.tasks import get_task
from tests.train.conftest import make_config


def _conv_weights(m: nn.Module) -> int:
    return sum(c.weight.numel() for c in m.modules() if isinstance(c, nn.Conv2d))


def test_layouts_shapes_names_and_sizes() -> None:
    x = torch.rand(5, 1, 8, 8)
    strided = DigitsCNN(num_classes=7, width=16)
    pooled = DigitsCNN(num_classes=7, width=16, layout="pooled")
    assert strided(x).shape == pooled(x).shape == (5, 7)
    # strided: 1->16->32->64 (the task's checkpoints use these names)
    assert _conv_weights(strided) == 9 * (16 + 16 * 32 + 32 * 64) == 23_184
    assert [k for k in strided.state_dict() if k.endswith("weight")] == [
        "features.0.weight", "features.1.weight", "features.3.weight", "features.4.weight",
        "features.6.weight", "features.7.weight", "fc.weight"]
    assert strided.fc.in_features == 64
    # pooled (the benchmarks'): 1->16->16, max-pool, ->32->32; the bench's memory figures
    assert _conv_weights(pooled) == 16_272
    convs = [n for n, c in pooled.named_modules() if isinstance(c, nn.Conv2d)]
    assert convs == ["features.0", "features.3", "features.7", "features.10"]
    assert isinstance(pooled.features[6], nn.MaxPool2d) and pooled.fc.in_features == 32
    assert LAYOUT == "pooled"


@pytest.mark.parametrize("layout", ["strided", "pooled"])
def test_norm_none_has_conv_biases_and_dropout_only_in_training(layout: str) -> None:
    m = DigitsCNN(width=4, norm="none", dropout=0.5, layout=layout)
    assert not any(isinstance(c, nn.BatchNorm2d) for c in m.modules())
    assert all(c.bias is not None for c in m.modules() if isinstance(c, nn.Conv2d))
    x = torch.rand(8, 1, 8, 8)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.equal(a, m(x))  # dropout draws differ
    bn = DigitsCNN(width=4, layout=layout)
    assert all(c.bias is None for c in bn.modules() if isinstance(c, nn.Conv2d))


def test_model_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"layout='wide'.*strided, pooled"):
        DigitsCNN(layout="wide")
    with pytest.raises(ValueError, match="norm='ln'"):
        DigitsCNN(norm="ln", layout="pooled")
    with pytest.raises(ValueError, match="width=0"):
        DigitsCNN(width=0, layout="pooled")


def test_sklearn_splitter_is_the_benchmarks_split() -> None:
    xtr, ytr, xte, yte = bench_split(0)
    assert SPLIT == {"test_fraction": 0.25, "splitter": "sklearn"}
    assert xtr.shape == (1347, 1, 8, 8) and xte.shape == (450, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == yte.dtype == torch.int64
    assert float(xtr.min()) == 0.0 and float(xtr.max()) == 1.0
    # train_test_split's shuffled order and class balance, pinned (the bench's numbers depend
    # on them)
    assert yte[:12].tolist() == [2, 0, 4, 9, 4, 1, 2, 4, 6, 7, 9, 1]
    assert ytr[:12].tolist() == [7, 3, 6, 6, 7, 6, 7, 9, 2, 9, 0, 9]
    assert torch.bincount(yte).tolist() == [45, 46, 44, 46, 45, 46, 45, 45, 43, 45]
    assert float(xtr.sum()) == 26312.8125 and float(xte.sum()) == 8794.5625
    # the same images as the task's loader, only split differently
    tr, te = load_sklearn_digits()
    every = torch.cat([tr.tensors[0], te.tensors[0]]).flatten(1)
    ours = torch.cat([xtr, xte]).flatten(1)
    assert torch.equal(every.sum(0), ours.sum(0)) and len(every) == len(ours) == 1797
    assert not torch.equal(bench_split(1)[3], yte)  # the seed moves the split


def test_loader_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"splitter='random'.*per-class, sklearn"):
        load_sklearn_digits(splitter="random")
    with pytest.raises(ValueError, match="test_fraction=1.5"):
        load_sklearn_digits(test_fraction=1.5, splitter="sklearn")


def test_task_reaches_both_layouts_and_splitters() -> None:
    task = get_task("classify-digits")
    cfg = make_config(
        model={"kwargs": {"width": 16, "layout": "pooled"}},
        data={"kwargs": {"split_seed": 0, "test_fraction": 0.25, "splitter": "sklearn"}},
    )
    assert _conv_weights(task.build_model(cfg)) == 16_272
    train, test = task.build_datasets(cfg)
    assert len(train) == 1347 and len(test) == 450
    assert torch.equal(test.tensors[1], bench_split(0)[3])
    cfg.data.kwargs["splitter"] = "nope"
    with pytest.raises(ValueError, match="splitter='nope'"):
        task.build_datasets(cfg)
