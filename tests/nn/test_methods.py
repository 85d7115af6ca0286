"""The nn method registry (lowbit.nn.methods): one entry per recipe weight method, bits
validated against its range, unknown names listed, no import cycle among the nn modules."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit.quant as Q
import lowbit.quant.registry as qreg
from lowbit.nn import (
    ClipWeightQuant,
    INQWeightQuant,
    QNWeightQuant,
    Recipe,
    RegistryWeightQuant,
    make_weight_quantizer,
    methods,
)
from lowbit.nn.recipe import NN_METHODS, check_method
from lowbit.registry import Registry

ROOT = Path(__file__).resolve().parents[2]

# written out by hand from the papers / the modules' documentation, not read from the code
NN_ONLY = {"clip", "inq-incremental"}
EXPECTED = {  # name: (module class, default bits, (lo, hi))
    "lbw-exact": (RegistryWeightQuant, 4, (2, 8)),
    "lbw-approx": (RegistryWeightQuant, 6, (2, 8)),
    "lbw-ternary": (RegistryWeightQuant, 2, (2, 2)),
    "inq": (RegistryWeightQuant, 4, (2, 8)),
    "twn": (RegistryWeightQuant, 2, (2, 2)),
    "binary": (RegistryWeightQuant, 1, (1, 1)),
    "dorefa": (RegistryWeightQuant, 4, (1, 8)),
    "uniform": (RegistryWeightQuant, 8, (2, 8)),
    "kmeans": (RegistryWeightQuant, 4, (1, 8)),
    "log": (RegistryWeightQuant, 4, (2, 8)),
    "qn": (QNWeightQuant, 2, (1, 8)),
    "clip": (ClipWeightQuant, 8, (2, 8)),
    "inq-incremental": (INQWeightQuant, 4, (2, 8)),
}


def _weight() -> torch.Tensor:
    return torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.1


def test_registry_lists_the_quant_registry_plus_the_nn_only_methods() -> None:
    expected = sorted(set(Q.list_quantizers()) | NN_ONLY)
    assert methods.names() == expected
    assert set(EXPECTED) == set(expected)  # the table above covers every method
    assert methods.nn_only_names() == tuple(sorted(NN_ONLY))
    assert tuple(NN_METHODS) == ("clip", "inq-incremental")
    for name in expected:
        m = methods.get(name)
        assert m.name == name and m.nn_only == (name in NN_ONLY)
        assert m.description.strip() and "\n" not in m.description
        assert dataclasses.is_dataclass(m.params_cls)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entry_matches_the_documented_defaults_and_ranges(name: str) -> None:
    cls, default, rng = EXPECTED[name]
    m = methods.get(name)
    assert m.cls is cls
    assert m.default_bits == default
    assert m.bit_range == rng
    assert check_method(name, None) == default
    assert Recipe(method=name).resolve("c", "conv").bits == default
    if not m.nn_only:  # the tensor quantizer agrees
        e = Q.get(name)
        assert e.default_bits == default and e.bit_range == rng


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_method_builds_at_its_default_and_its_range_ends(name: str) -> None:
    cls, default, (lo, hi) = EXPECTED[name]
    w = _weight()
    for bits in sorted({lo, default, hi}):
        for q in (make_weight_quantizer(name, bits), methods.build(name, bits)):
            assert type(q) is cls and q.method == name and q.bits == bits
            assert q.params.bits == bits
            out = q(w)
            assert out.shape == w.shape and bool(torch.isfinite(out).all())
            res = q.freeze(w)
            assert res.bits == bits and res.values.shape == w.shape
    q = make_weight_quantizer(name, None)  # None: the default
    assert type(q) is cls and q.bits == default


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_out_of_range_bits_name_the_value_and_the_range(name: str) -> None:
    _, _, (lo, hi) = EXPECTED[name]
    allowed = str(lo) if lo == hi else f"[{lo}, {hi}]"
    for bad in (lo - 1, hi + 1):
        for call in (lambda b: check_method(name, b), lambda b: make_weight_quantizer(name, b),
                     lambda b: Recipe(method=name, bits=b)):
            with pytest.raises(ValueError) as ei:
                call(bad)
            msg = str(ei.value)
            assert name in msg and f"got {bad}" in msg and allowed in msg, msg
    with pytest.raises(ValueError, match="int"):
        check_method(name, "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int"):
        check_method(name, True)  # type: ignore[arg-type]


def test_set_bits_is_checked_by_the_same_range() -> None:
    for name in ("clip", "qn", "inq-incremental", "lbw-exact"):
        _, _, (lo, hi) = EXPECTED[name]
        q = make_weight_quantizer(name, lo)
        q.set_bits(hi)
        assert q.bits == hi == q.params.bits
        with pytest.raises(ValueError, match=rf"\[{lo}, {hi}\], got {hi + 1}"):
            q.set_bits(hi + 1)
        assert q.bits == hi  # unchanged after the refusal


def test_unknown_names_and_parameters_list_the_known_ones() -> None:
    known = sorted(set(Q.list_quantizers()) | NN_ONLY)
    for call in (lambda: methods.get("nope"), lambda: check_method("nope", 4),
                 lambda: make_weight_quantizer("nope", 4), lambda: Recipe(method="nope")):
        with pytest.raises(ValueError) as ei:
            call()
        msg = str(ei.value)
        assert "'nope'" in msg and "unknown quantizer" in msg
        listed = msg.split("known: ", 1)[1].split(", ")
        assert listed == known
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['mu'\]; known: \['calibrator', "
                                         r"'learnable'\]"):
        check_method("clip", 8, {"mu": 1.0})
    with pytest.raises(ValueError, match="not in params"):
        make_weight_quantizer("lbw-exact", 4, {"bits": 4})


def test_overhead_bytes_per_method() -> None:
    c = 5
    # level tables: 2**b float32 entries per channel (k-means), per tensor (post-training QN)
    assert make_weight_quantizer("kmeans", 3, {"per_channel": True}).overhead_bytes(c) == \
        4 * c * 8
    assert make_weight_quantizer("kmeans", 3).overhead_bytes(c) == 4 * 8
    assert RegistryWeightQuant.build("qn", 3).overhead_bytes(c) == 4 * 8
    # trainable QN: its signed levels {-(2**(b-1)-1) .. 2**(b-1)-1}, 2 levels at 1 bit
    for b, n in ((1, 2), (2, 3), (3, 7), (8, 255)):
        assert make_weight_quantizer("qn", b).overhead_bytes(c) == 4 * n
    # affine uniform: scale + zero point
    assert make_weight_quantizer("uniform", 8, {"symmetric": False, "per_channel": True}
                                 ).overhead_bytes(c) == 8 * c
    assert make_weight_quantizer("uniform", 8).overhead_bytes(c) == 4
    assert make_weight_quantizer("lbw-exact", 4, {"per_channel": True}).overhead_bytes(c) == 4 * c
    for name in ("lbw-exact", "twn", "binary", "dorefa", "log", "clip", "inq-incremental"):
        assert make_weight_quantizer(name, None).overhead_bytes(c) == 4, name
    q = make_weight_quantizer("qn", 2)
    q.set_bits(3)
    assert q.overhead_bytes(c) == 4 * 7  # follows the bit-width


def test_nn_only_parameters_are_validated_by_their_dataclass() -> None:
    q = make_weight_quantizer("inq-incremental", 3, {"portions": [0.5, 1.0]})
    assert q.portions == (0.5, 1.0) and q.params.portions == (0.5, 1.0)
    with pytest.raises(ValueError, match="inq-incremental.*last inq portion"):
        check_method("inq-incremental", 3, {"portions": [0.5]})
    with pytest.raises(ValueError, match="calibrator"):
        make_weight_quantizer("clip", 8, {"calibrator": "median"})
    q = make_weight_quantizer("clip", 6, {"learnable": False, "calibrator": "minmax"})
    assert not q.learnable and q.calibrator == "minmax"
    assert isinstance(q.clip, torch.Tensor) and not isinstance(q.clip, torch.nn.Parameter)


def test_a_tensor_quantizer_registered_later_becomes_a_method(monkeypatch) -> None:
    quant = Registry("quantizer")
    for n, e in qreg._REGISTRY.items():
        quant.register(n, e)
    nn_reg = Registry("quantizer")
    for n, m in methods.METHODS.items():
        nn_reg.register(n, m)
    monkeypatch.setattr(qreg, "_REGISTRY", quant)
    monkeypatch.setattr(methods, "METHODS", nn_reg)
    qreg.register(qreg.QuantizerEntry("sign-test", qreg.BinaryParams, qreg._binary, "test"))
    assert "sign-test" in methods.names()
    q = make_weight_quantizer("sign-test", None)
    assert isinstance(q, RegistryWeightQuant) and q.bits == 1
    assert q(_weight()).abs().unique().numel() == 1  # +-alpha


# ---------------------------------------------------------------------- imports


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level and inside functions), as dotted names; ``from
    pkg import name`` also yields ``pkg.name`` (it may be a submodule)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_nn_quantizer_modules_form_no_cycle() -> None:
    mods = ("methods", "quantizers", "layers", "inq", "recipe")
    graph = {m: {d.split(".")[2] for d in _imports(ROOT / "lowbit" / "nn" / f"{m}.py")
                 if d.startswith("lowbit.nn.") and d.split(".")[2] in mods}
             for m in mods}
    assert graph["methods"] == set()  # the registry imports none of them
    assert graph["quantizers"] == {"methods"}

    def reach(m: str, seen: frozenset[str] = frozenset()) -> None:
        assert m not in seen, f"import cycle through {sorted(seen)}"
        for d in graph[m]:
            reach(d, seen | {m})

    for m in mods:
        reach(m)
    lowbit_imports = {d for d in _imports(ROOT / "lowbit" / "registry.py")
                      if d.startswith("lowbit")}
    assert lowbit_imports == set()  # the generic registry imports nothing from lowbit


def test_importing_inq_first_works() -> None:
    # a fresh interpreter (the import graph itself is checked above)
    code = ("import lowbit.nn.inq\n"
            "import lowbit.nn.methods as M\n"
            "from lowbit.nn.recipe import check_method\n"
            "print(','.join(M.names()), check_method('inq-incremental', None))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert r.returncode == 0, r.stderr
    names, bits = r.stdout.split()
    assert names.split(",") == sorted(set(Q.list_quantizers()) | NN_ONLY)
    assert bits == "4"


# ---------------------------------------------------------------------- lowbit.registry


def test_generic_registry() -> None:
    reg: Registry[int] = Registry("widget")
    assert reg.register("b", 2) == 2

    @reg.register("a")
    def _a() -> int:
        return 1

    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    assert reg.get("a") is _a and "a" in reg and "z" not in reg and [] not in reg
    with pytest.raises(ValueError, match=r"^unknown widget 'z'; known: a, b$"):
        reg.get("z")
    with pytest.raises(ValueError, match="unknown widget"):
        reg.get([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 3)
    with pytest.raises(ValueError, match="non-empty str"):
        reg.register("", 3)
    assert reg.items() == [("a", _a), ("b", 2)]
