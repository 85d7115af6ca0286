"""lowbit.registry.Registry: the one name -> object registry of lowbit's catalogues."""

from __future__ import annotations

import pytest

from lowbit.registry import Registry


def test_copy_is_independent_and_keeps_the_kind() -> None:
    reg: Registry[int] = Registry("colour")
    reg.register("red", 1)
    cp = reg.copy()
    cp.register("blue", 2)
    assert reg.names() == ["red"] and cp.names() == ["blue", "red"]
    with pytest.raises(ValueError, match=r"unknown colour 'green'; known: red$"):
        reg.get("green")
    with pytest.raises(ValueError, match=r"unknown colour 'green'; known: blue, red$"):
        cp.get("green")


@pytest.mark.parametrize("kind_module", ["lowbit.train.tasks", "lowbit.quant.registry",
                                         "lowbit.nn.methods", "lowbit.detection.registry"])
def test_the_catalogues_use_it(kind_module: str) -> None:
    import importlib

    mod = importlib.import_module(kind_module)
    regs = [v for v in vars(mod).values() if isinstance(v, Registry)]
    assert regs, f"{kind_module} holds no lowbit.registry.Registry"


@pytest.mark.parametrize("call", [
    lambda: __import__("lowbit.train.tasks", fromlist=["x"]).get_task("nope"),
    lambda: __import__("lowbit.quant", fromlist=["x"]).get("nope"),
    lambda: __import__("lowbit.nn.methods", fromlist=["x"]).get("nope"),
    lambda: __import__("lowbit.detection", fromlist=["x"]).create_model("nope", 3),
    lambda: __import__("lowbit.detection.backbones", fromlist=["x"]).create_backbone("nope"),
    lambda: __import__("lowbit.studies.methods", fromlist=["x"]).parse_methods("nope"),
])
def test_every_catalogue_raises_the_same_error(call) -> None:
    with pytest.raises(ValueError, match=r"unknown [a-z ]+ 'nope'; known: \w"):
        call()
