"""What :func:`lowbit.nn.prepare` quantized and what it left float: the coverage report.

A model can only be trusted to be "4-bit" when every weight it computes with is quantized.
:func:`coverage` lists the model's conv and linear layers (every class that convolves or
multiplies with a ``weight`` Parameter: ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``,
``nn.Linear`` and their subclasses), says which are quantized and why each other one is left
float, and gives the share of their weight elements that is quantized. Shared weights count
once. Modules of other classes that own a weight Parameter of two or more dimensions (and are
not normalisation layers or embeddings) are listed as ``unrecognised``: lowbit cannot know how
they use their weight, so they are neither quantized nor counted in the share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lowbit.nn.layers import QuantMixin, weight_layer_kind

__all__ = ["CoverageReport", "coverage", "COVERAGE_WARN", "CoverageWarning"]

#: prepare warns when less than this share of conv+linear weights is quantized
COVERAGE_WARN = 0.9

# reasons recorded by prepare, per module object (kept on the model: ``_lowbit_float_reasons``)
_REASONS_ATTR = "_lowbit_float_reasons"

_NOT_WEIGHT_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                      nn.Embedding, nn.EmbeddingBag)


class CoverageWarning(UserWarning):
    """Less than :data:`COVERAGE_WARN` of a prepared model's conv+linear weights is quantized."""


@dataclass
class CoverageReport:
    """Per-layer coverage of a (prepared) model.

    Attributes:
        quantized: ``[(name, class name, numel, method, bits)]`` of the quantized layers.
        left_float: ``[(name, class name, numel, reason)]`` of conv/linear layers left float.
        unrecognised: ``[(name, class name, numel)]``: other modules owning a >= 2-D weight.
        quantized_numel, total_numel: weight elements quantized / of all conv+linear layers
            (each shared Parameter once).
    """

    quantized: list[tuple[str, str, int, str, int]] = field(default_factory=list)
    left_float: list[tuple[str, str, int, str]] = field(default_factory=list)
    unrecognised: list[tuple[str, str, int]] = field(default_factory=list)
    quantized_numel: int = 0
    total_numel: int = 0

    @property
    def share(self) -> float:
        """Quantized share of conv+linear weight elements, in [0, 1] (1.0 with no layers)."""
        return self.quantized_numel / self.total_numel if self.total_numel else 1.0

    def summary(self) -> str:
        """One line: ``coverage: 97.3% of 1,234,567 conv+linear weights quantized (52 layers
        quantized, 1 left float)``."""
        return (f"coverage: {100 * self.share:.1f}% of {self.total_numel:,} conv+linear weights "
                f"quantized ({len(self.quantized)} layers quantized, {len(self.left_float)} "
                f"left float" + (f", {len(self.unrecognised)} unrecognised"
                                  if self.unrecognised else "") + ")")

    def __str__(self) -> str:
        lines = [self.summary()]
        if self.left_float:
            lines.append("left float:")
            w = max(len(n) for n, *_ in self.left_float)
            lines += [f"  {n.ljust(w)}  {c} ({k:,} weights): {r}"
                      for n, c, k, r in self.left_float]
        if self.unrecognised:
            lines.append("unrecognised (own a weight, not conv/linear; not quantized):")
            lines += [f"  {n}  {c} ({k:,} weights)" for n, c, k in self.unrecognised]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "share": self.share,
            "quantized_numel": self.quantized_numel,
            "total_numel": self.total_numel,
            "quantized": [{"name": n, "class": c, "numel": k, "method": m, "bits": b}
                          for n, c, k, m, b in self.quantized],
            "left_float": [{"name": n, "class": c, "numel": k, "reason": r}
                           for n, c, k, r in self.left_float],
            "unrecognised": [{"name": n, "class": c, "numel": k}
                             for n, c, k in self.unrecognised],
        }


def _class_name(m: nn.Module) -> str:
    cls = getattr(type(m), "_float_cls", type(m))
    return cls.__name__


def coverage(model: nn.Module) -> CoverageReport:
    """The :class:`CoverageReport` of ``model`` as it is now (prepared or not; the reasons
    recorded by :func:`lowbit.nn.prepare` are used where present, else ``"not prepared"``)."""
    reasons: dict[int, str] = getattr(model, _REASONS_ATTR, None) or {}
    rep = CoverageReport()
    seen_mod: set[int] = set()
    seen_w: set[int] = set()
    for name, m in model.named_modules():
        if id(m) in seen_mod:
            continue
        seen_mod.add(id(m))
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if weight_layer_kind(m) is None:
            if (w is not None and w.dim() >= 2 and not isinstance(m, _NOT_WEIGHT_LAYERS)
                    and not isinstance(m, QuantMixin)):
                rep.unrecognised.append((name, _class_name(m), w.numel()))
            continue
        if w is None:
            rep.left_float.append((name, _class_name(m), 0,
                                   "no `weight` Parameter (parametrized or weight-normed?)"))
            continue
        first = id(w) not in seen_w
        seen_w.add(id(w))
        n = w.numel() if first else 0
        rep.total_numel += n
        if isinstance(m, QuantMixin):
            rep.quantized_numel += n
            rep.quantized.append((name, _class_name(m), w.numel(), m.method, m.bits))
        else:
            rep.left_float.append((name, _class_name(m), w.numel(),
                                   reasons.get(id(m), "not prepared")))
    return rep
