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
                                         "lowbit.nn.methods"])
def test_the_catalogues_use_it(kind_module: str) -> None:
    import importlib

    mod = importlib.import_module(kind_module)
    regs = [v for v in vars(mod).values() if isinstance(v, Registry)]
    assert regs, f"{kind_module} holds no lowbit.registry.Registry"
