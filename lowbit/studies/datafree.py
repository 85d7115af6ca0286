"""`lowbit datafree`: data-free post-training weight quantization (paper 004) on a detector.

No training data is used: each ``Conv2d`` / ``Linear`` weight of the FP32 run is replaced by its
quantized values, computed from the weight alone; activations stay float. Only the evaluation
reads the test set (the first ``test_images`` of it when given). Schemes (``bits`` b):

* ``uniform``: symmetric uniform, ``2**(b-1) - 1`` steps each side, scale ``max|W| /
  (2**(b-1) - 1)`` (min/max), round half to even;
* ``log``: logarithmic, levels ``alpha * {0, +-2**(1-n), ..., +-1}`` with ``n = 2**(b-2)`` and
  ``alpha = max|W|`` (:func:`lowbit.quant.log_quantize`);
* ``pot``: power-of-two, LBW-Net's exact least-squares ``{0, +-2**(s-n+1), ..., +-2**s}``
  (:func:`lowbit.quant.lbw_exact`; per channel: one exponent per output channel);
* ``kmeans``: optimal 1-D clustering, ``2**b`` k-means centroids
  (:func:`lowbit.quant.kmeans_quantize`).

Granularity ``tensor``: one scale / codebook per layer; ``channel``: one per output channel
(axis 0). A "quantization group" below is the set of weights sharing one scale or codebook.

Statistics of the quantized weights (all layers pooled; ``B = 16``):

* ``zero_share``: exact zeros / weights (global sparsity);
* ``zero_block_share`` (local sparsity): each output channel's weights ``w[o]`` flattened in
  memory order (``in, kh, kw``) and cut into consecutive blocks of ``B`` (the last block of a
  row may be shorter); the share of blocks that are entirely zero, i.e. the work a
  block-sparse kernel could skip. A scheme can have many zeros but few zero blocks when its
  zeros are scattered;
* ``range_bits``: per quantization group ``log2(max|q| / min_{q != 0} |q|)`` (the octaves its
  non-zero magnitudes span; 0 when it has no non-zero or one magnitude), weighted by the
  group's weight count;
* ``levels_used``: per quantization group the number of distinct values (zero included)
  divided by ``2**b``, weighted by the group's weight count.

Weight memory: ``ceil(numel * b / 8)`` bytes of codes per layer plus 4 bytes per scale /
exponent per group (``kmeans``: ``4 * 2**b`` bytes of codebook per group).

Object-class clustering (004 names it as a way "to lower bit-precision beyond quantization
limits"; the text available here is the abstract only, so this is our interpretation): the
class-specific output layer of the detector (R-FCN's ``rfcn_cls`` position-sensitive score-map
conv, whose output channels ``[c k^2, (c+1) k^2)`` belong to class ``c``, background 0;
Faster R-CNN's ``cls_score``) gives each class a weight vector. Classes whose vectors point the
same way read the shared features alike ("their detections share features"); we cluster the
``C + 1`` classes into ``G`` groups by average-linkage hierarchical clustering on cosine
distance (data-free) and give each class group its own scale / codebook in that layer, the
rest of the network quantized per tensor at the same bits. Controls: the same layer per tensor
(one group), ``G`` random groups of the same sizes, and one group per class. The question
measured: the fewest bits with mAP within ``tolerance`` of FP32, per variant.

Every row writes its detections in the VOC results format (``comp4_det_test_<class>.txt``
under ``OUT/runs/<row>``) and gets its mAP's 95% bootstrap interval over the test images and
its drop's paired interval vs FP32 (:func:`lowbit.runs.add_intervals`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "SCHEMES",
    "SCHEME_QUANTIZERS",
    "GRANULARITIES",
    "QuantizedLayer",
    "quantize_groups",
    "quantize_model",
    "weight_stats",
    "class_specific_layers",
    "cluster_classes",
    "datafree",
]

#: data-free scheme -> (tensor quantizer of :mod:`lowbit.quant`'s registry, its parameters);
#: every scheme quantizes one tensor (a group of rows) with that entry at the row's bits
SCHEME_QUANTIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "uniform": ("uniform", {"symmetric": True, "per_channel": False, "method": "minmax"}),
    "log": ("log", {}),
    "pot": ("lbw-exact", {}),
    "kmeans": ("kmeans", {}),
}
SCHEMES: tuple[str, ...] = tuple(SCHEME_QUANTIZERS)
GRANULARITIES: tuple[str, ...] = ("tensor", "channel")
BLOCK = 16


@dataclass
class QuantizedLayer:
    """One quantized weight: ``values`` (the weight's shape), ``bits`` and ``groups`` (lists of
    output-channel indices sharing one scale / codebook; they partition ``range(out)``)."""

    name: str
    values: Tensor
    bits: int
    groups: list[list[int]]
    scheme: str

    def nbytes(self) -> int:
        """Codes plus per-group scales / codebooks (see the module doc)."""
        per = 4 * (1 << self.bits) if self.scheme == "kmeans" else 4
        return math.ceil(self.values.numel() * self.bits / 8) + per * len(self.groups)


def _q_tensor(x: Tensor, scheme: str, bits: int) -> Tensor:
    """Per-tensor quantized values of ``x`` with ``scheme`` at ``bits`` (the registry entry of
    :data:`SCHEME_QUANTIZERS`)."""
    import lowbit.quant as Q

    if scheme not in SCHEME_QUANTIZERS:
        raise ValueError(f"unknown data-free scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    name, params = SCHEME_QUANTIZERS[scheme]
    return Q.quantize(name, x, bits=bits, **params).values


def quantize_groups(w: Tensor, scheme: str, bits: int, groups: Sequence[Sequence[int]]) -> Tensor:
    """``w`` quantized group by group: the rows ``w[g]`` of each group share one per-tensor
    quantizer. Per channel: ``[[0], [1], ...]``; per tensor: ``[list(range(out))]``."""
    import lowbit.quant as Q

    out_ch = w.shape[0]
    if len(groups) == out_ch and all(len(g) == 1 for g in groups) and scheme != "pot":
        # one group per channel: the vectorised per-channel quantizers
        if scheme == "uniform":
            return Q.uniform_quantize(w, bits, True, True, 0, "minmax")[0]
        if scheme == "log":
            return Q.log_quantize(w, bits, per_channel=True)[0]
        if scheme == "kmeans":
            return Q.kmeans_quantize(w, bits, per_channel=True)[0]
    q = torch.empty_like(w)
    seen = 0
    for g in groups:
        idx = torch.as_tensor(list(g), dtype=torch.long, device=w.device)
        q[idx] = _q_tensor(w[idx], scheme, bits)
        seen += len(g)
    if seen != out_ch:
        raise ValueError(f"groups cover {seen} of {out_ch} output channels")
    return q


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str, bits: int, granularity: str = "tensor",
                   layer_groups: dict[str, list[list[int]]] | None = None
                   ) -> list[QuantizedLayer]:
    """Replace every ``Conv2d`` / ``Linear`` weight of ``model`` by its data-free quantized
    values (in place). ``layer_groups``: per-layer groups overriding the granularity (class
    groups). Returns the quantized layers (for :func:`weight_stats` and memory)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown data-free scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    out = []
    for name, m in _weight_layers(model):
        w = m.weight.detach()
        oc = w.shape[0]
        if layer_groups and name in layer_groups:
            groups = layer_groups[name]
        elif granularity == "channel":
            groups = [[i] for i in range(oc)]
        else:
            groups = [list(range(oc))]
        try:
            q = quantize_groups(w, scheme, bits, groups)
        except ValueError as exc:
            raise ValueError(f"layer {name!r} ({scheme}, {bits} bits): {exc}") from exc
        if not bool(torch.isfinite(q).all()):
            raise ValueError(f"layer {name!r} ({scheme}, {bits} bits): non-finite values")
        m.weight.copy_(q)
        out.append(QuantizedLayer(name, q.detach().cpu().float(), bits, groups, scheme))
    if not out:
        raise ValueError("the model has no Conv2d / Linear layer to quantize")
    return out


def weight_stats(layers: Sequence[QuantizedLayer], block: int = BLOCK) -> dict[str, float]:
    """``zero_share``, ``zero_block_share``, ``range_bits``, ``levels_used`` (module doc) and
    ``bytes`` of the quantized layers."""
    zeros = numel = zblocks = nblocks = 0
    rng = lev = 0.0
    nbytes = 0
    for lay in layers:
        q = lay.values
        rows = q.reshape(q.shape[0], -1)
        n_in = rows.shape[1]
        zeros += int((rows == 0).sum())
        numel += rows.numel()
        pad = (-n_in) % block
        nz = torch.nn.functional.pad((rows != 0).float(), (0, pad)).reshape(
            rows.shape[0], -1, block).sum(-1)
        zblocks += int((nz == 0).sum())
        nblocks += nz.numel()
        for g in lay.groups:
            v = rows[torch.as_tensor(g, dtype=torch.long)].reshape(-1).double()
            a = v.abs()
            nzv = a[a > 0]
            r = math.log2(float(nzv.max()) / float(nzv.min())) if nzv.numel() else 0.0
            rng += r * v.numel()
            lev += torch.unique(v).numel() / (1 << lay.bits) * v.numel()
        nbytes += lay.nbytes()
    if numel == 0:
        raise ValueError("no weights to measure")
    return {"zero_share": zeros / numel, "zero_block_share": zblocks / nblocks,
            "range_bits": rng / numel, "levels_used": lev / numel, "bytes": float(nbytes)}


# ---------------------------------------------------------------------- object-class clustering


def class_specific_layers(model: nn.Module, num_classes: int) -> dict[str, int]:
    """``{layer name: output channels per class}`` of the class-specific output layers
    (``*rfcn_cls`` with ``(C + 1) k^2`` channels, ``*cls_score`` with ``C + 1`` rows), class
    ``c`` (0 = background) owning channels ``[c m, (c + 1) m)``."""
    out = {}
    for name, m in _weight_layers(model):
        if name.endswith("rfcn_cls") or name.endswith("cls_score"):
            oc = m.weight.shape[0]
            if oc % (num_classes + 1) == 0:
                out[name] = oc // (num_classes + 1)
    return out


def cluster_classes(w: Tensor, per_class: int, n_groups: int) -> list[list[int]]:
    """Classes (0..K-1 with ``K = out / per_class``) grouped by average-linkage hierarchical
    clustering on the cosine distance of their weight vectors ``w[c m:(c+1) m].flatten()``;
    at most ``n_groups`` groups, each sorted, groups ordered by their first class."""
    from scipy.cluster.hierarchy import fcluster, linkage

    k = w.shape[0] // per_class
    if not 1 <= n_groups <= k:
        raise ValueError(f"class groups must be in [1, {k}], got {n_groups}")
    vec = w.detach().double().reshape(k, -1).cpu().numpy()
    if n_groups == 1:
        return [list(range(k))]
    if n_groups == k:
        return [[c] for c in range(k)]
    z = linkage(vec, method="average", metric="cosine")
    lab = fcluster(z, t=n_groups, criterion="maxclust")
    groups: dict[int, list[int]] = {}
    for c, g in enumerate(lab):
        groups.setdefault(int(g), []).append(c)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def _rows_of(class_groups: list[list[int]], per_class: int) -> list[list[int]]:
    return [[c * per_class + j for c in g for j in range(per_class)] for g in class_groups]


def _random_like(class_groups: list[list[int]], seed: int = 0) -> list[list[int]]:
    k = sum(len(g) for g in class_groups)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed)).tolist()
    out, i = [], 0
    for g in class_groups:
        out.append(sorted(perm[i:i + len(g)]))
        i += len(g)
    return out


# --------------------------------------------------------------------------------- the workflow


class _Subset:
    """The first ``n`` items of a VOC-style data set, with ``eval_targets`` and ``classes``."""

    def __init__(self, ds: Any, n: int) -> None:
        self.ds, self.n = ds, min(n, len(ds))
        self.classes = getattr(ds, "classes", None)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.ds[i]

    def eval_targets(self) -> list[dict[str, Any]]:
        return self.ds.eval_targets()[: self.n]


def write_json(path: Path, obj: Any) -> None:
    from lowbit.runs import write_json as write_atomic

    write_atomic(path, obj)


def datafree(run: str | os.PathLike[str], out: str | os.PathLike[str], *,
             schemes: Sequence[str] = SCHEMES, granularities: Sequence[str] = GRANULARITIES,
             bits: Sequence[int] = (3, 4, 5, 6, 7, 8), class_groups: int | None = 3,
             cluster_scheme: str = "uniform", tolerance: float = 0.01,
             test_images: int | None = None, progress: bool = True) -> dict[str, Any]:
    """The data-free grid (scheme x granularity x bits) and the class-clustering study on
    the FP32 run ``run``; writes ``OUT/datafree.json``, ``datafree.md``, ``datafree.png``.

    ``class_groups`` None or 0 skips the clustering study. ``tolerance``: mAP (fraction, 0.01
    = 1 point) below FP32 still counted as "equal". Resumable: rows already measured with the
    same settings are reused. A failing row is recorded with its error; the others go on.
    """
    from tqdm import tqdm

    from lowbit.runs import add_intervals, eval_batch_size, fp32_model, load_base, row_dir, score
    from lowbit.runtime import run_info

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in schemes:
        if s not in SCHEMES:
            raise ValueError(f"unknown data-free scheme {s!r}; known: {', '.join(SCHEMES)}")
    for g in granularities:
        if g not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {g!r}")
    bits = sorted(set(int(b) for b in bits))
    if not bits:
        raise ValueError("no bit-width given")
    import lowbit.quant as Q
    from lowbit.quant._common import check_bits

    # the widths every chosen scheme's registry entry accepts (uniform, log, pot: 2..8)
    lo = max(Q.get(SCHEME_QUANTIZERS[s][0]).bit_range[0] for s in schemes)
    hi = min(Q.get(SCHEME_QUANTIZERS[s][0]).bit_range[1] for s in schemes)
    for b in bits:
        check_bits(b, lo, hi, "data-free bits")
    if cluster_scheme not in SCHEMES:
        raise ValueError(f"cluster scheme must be one of {SCHEMES}, got {cluster_scheme!r}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    src = Path(run)
    if not src.is_dir():
        raise ValueError(f"{src}: datafree needs a trained FP32 run folder")
    base = load_base(src, out, progress)
    test_ds = base.test_ds if not test_images else _Subset(base.test_ds, int(test_images))
    settings = {"fp32_run": str(base.run_dir), "test_images": len(test_ds), "block": BLOCK}
    res_path = out / "datafree.json"
    old = json.loads(res_path.read_text()) if res_path.is_file() else {}
    reuse = old.get("settings") == settings
    old_rows = {r["key"]: r for r in old.get("rows", [])} if reuse else {}

    ref = fp32_model(base)
    num_classes = int(getattr(ref, "num_classes", 0) or len(getattr(base.test_ds, "classes", [])))
    cls_layers = class_specific_layers(ref, num_classes) if class_groups else {}
    groups_info: dict[str, Any] = {}
    variants: dict[str, dict[str, list[list[int]]]] = {}
    if cls_layers:
        names = ["background", *list(getattr(base.test_ds, "classes", []))]
        lname, per = next(iter(cls_layers.items()))
        w = dict(_weight_layers(ref))[lname].weight
        cg = cluster_classes(w, per, int(class_groups))
        rg = _random_like(cg)
        k = w.shape[0] // per
        groups_info = {"layer": lname, "per_class_channels": per,
                       "clusters": [[names[c] if c < len(names) else str(c) for c in g]
                                    for g in cg],
                       "random": [[names[c] if c < len(names) else str(c) for c in g]
                                  for g in rg]}
        variants = {"class-groups": {lname: _rows_of(cg, per)},
                    "random-groups": {lname: _rows_of(rg, per)},
                    "per-class": {lname: _rows_of([[c] for c in range(k)], per)}}

    specs: list[tuple[str, dict[str, Any]]] = [("fp32", {"scheme": "fp32", "bits": 32})]
    for s in schemes:
        for g in granularities:
            for b in bits:
                specs.append((f"{s}/{g}/{b}", {"scheme": s, "granularity": g, "bits": b}))
    for v in variants:
        for b in bits:
            specs.append((f"{cluster_scheme}/{v}/{b}",
                          {"scheme": cluster_scheme, "granularity": "tensor", "bits": b,
                           "variant": v}))
    if variants and ("tensor" not in granularities or cluster_scheme not in schemes):
        for b in bits:  # the per-tensor reference of the clustering study
            specs.append((f"{cluster_scheme}/tensor/{b}",
                          {"scheme": cluster_scheme, "granularity": "tensor", "bits": b}))
    rows: list[dict[str, Any]] = []
    bar = tqdm(specs, desc="datafree", unit="model", disable=not progress)
    fp32_map = None
    for key, spec in bar:
        bar.set_description(key)
        if key in old_rows and old_rows[key].get("status") == "ok" \
                and old_rows[key].get("dets_dir"):
            rows.append(old_rows[key])
            if key == "fp32":
                fp32_map = old_rows[key]["mAP"]
            continue
        row: dict[str, Any] = {"key": key, **spec}
        t0 = time.perf_counter()
        try:
            model = fp32_model(base)
            if spec["scheme"] == "fp32":
                layers = [QuantizedLayer(n, m.weight.detach().cpu().float(), 32,
                                         [list(range(m.weight.shape[0]))], "fp32")
                          for n, m in _weight_layers(model)]
                st = weight_stats(layers)
                st["bytes"] = float(sum(4 * lay.values.numel() for lay in layers))
                st["levels_used"] = None
            else:
                layers = quantize_model(model, spec["scheme"], spec["bits"],
                                        spec["granularity"],
                                        variants.get(spec.get("variant", ""), None))
                st = weight_stats(layers)
            met = score(base.task, model, test_ds, row_dir(out, key), base.device,
                        eval_batch_size(base))
            row.update({"mAP": met["mAP"], "mAP_area": met["mAP_area"],
                        "dets_dir": met["dets_dir"], **st, "status": "ok", "error": None})
            if key == "fp32":
                fp32_map = met["mAP"]
        except Exception as exc:  # noqa: BLE001 - one failing row must not stop the grid
            row.update({"status": "failed", "error": f"{key}: {type(exc).__name__}: {exc}"})
            if progress:
                tqdm.write(f"!! {row['error']}")
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        write_json(res_path, {"settings": settings, "rows": rows})
    for r in rows:
        r["drop"] = (fp32_map - r["mAP"]) if fp32_map is not None and r.get("status") == "ok" \
            else None

    def bits_needed(pred: Any) -> int | None:
        ok = sorted(r["bits"] for r in rows if pred(r) and r["status"] == "ok"
                    and r["drop"] is not None and r["drop"] <= tolerance)
        return ok[0] if ok else None

    needed = {f"{s}/{g}": bits_needed(lambda r, s=s, g=g: r["scheme"] == s and r.get(
        "granularity") == g and "variant" not in r) for s in schemes for g in granularities}
    clustering = None
    if variants:
        per_variant = {"per-tensor": bits_needed(
            lambda r: r["scheme"] == cluster_scheme and r.get("granularity") == "tensor"
            and "variant" not in r)}
        for v in variants:
            per_variant[v] = bits_needed(lambda r, v=v: r.get("variant") == v)
        clustering = {**groups_info, "scheme": cluster_scheme, "n_groups": int(class_groups),
                      "bits_needed": per_variant}
    boot = add_intervals(rows, test_ds, "fp32")
    result = {"settings": settings, "tolerance": tolerance, "rows": rows,
              "bits_needed": needed, "clustering": clustering, "bootstrap": boot,
              "run_info": run_info()}
    write_json(res_path, result)
    md = format_datafree(result, bits)
    (out / "datafree.md").write_text("# lowbit datafree\n\n" + md +
                                     "\n\n![mAP vs bits](datafree.png)\n")
    _plot(result, bits, out / "datafree.png")
    result["files"] = {"json": str(res_path), "markdown": str(out / "datafree.md"),
                       "png": str(out / "datafree.png")}
    if progress:
        print(md)
    return result


def format_datafree(res: dict[str, Any], bits: Sequence[int]) -> str:
    """Markdown: the mAP grid, the statistics at each bit-width, and the clustering study."""
    rows = res["rows"]
    by = {r["key"]: r for r in rows}
    fp = by.get("fp32")
    lines = []
    if fp and fp["status"] == "ok":
        lines.append(f"FP32 mAP {100 * fp['mAP']:.2f}% on {res['settings']['test_images']} "
                     f"test images; weight range {fp['range_bits']:.1f} octaves; "
                     f"'bits needed' = fewest bits within {100 * res['tolerance']:.1f} mAP "
                     "points of FP32.\n")
    combos = sorted({(r["scheme"], r["granularity"]) for r in rows
                     if r["scheme"] != "fp32" and "variant" not in r})
    lines.append("| scheme | granularity | " + " | ".join(f"{b}-bit" for b in bits)
                 + " | bits needed |")
    lines.append("|---|---|" + "---:|" * (len(bits) + 1))
    for s, g in combos:
        cells = []
        for b in bits:
            r = by.get(f"{s}/{g}/{b}")
            cells.append("failed" if r and r["status"] != "ok" else
                         (f"{100 * r['mAP']:.2f}" if r else ""))
        need = res["bits_needed"].get(f"{s}/{g}")
        need_s = need if need is not None else f"> {max(bits)}"
        lines.append(f"| {s} | {g} | " + " | ".join(cells) + f" | {need_s} |")
    lines += ["", "Statistics of the quantized weights (zero share / zero 16-blocks / range in "
              "octaves / levels used):", "",
              "| scheme | granularity | bits | zero share | zero blocks | range (octaves) | "
              "levels used | weight memory |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s, g in combos:
        for b in bits:
            r = by.get(f"{s}/{g}/{b}")
            if not r or r["status"] != "ok":
                continue
            lines.append(f"| {s} | {g} | {b} | {100 * r['zero_share']:.1f}% | "
                         f"{100 * r['zero_block_share']:.1f}% | {r['range_bits']:.2f} | "
                         f"{100 * r['levels_used']:.0f}% | {r['bytes'] / 1024:.1f} KiB |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed rows:", ""] + [f"- {r['error']}" for r in failed]
    cl = res.get("clustering")
    if cl:
        lines += ["", f"## Object-class clustering ({cl['scheme']}, layer `{cl['layer']}`)", "",
                  f"Class groups ({cl['n_groups']}, cosine average linkage): "
                  + "; ".join("{" + ", ".join(g) + "}" for g in cl["clusters"]),
                  "Random control groups: " + "; ".join("{" + ", ".join(g) + "}"
                                                         for g in cl["random"]), "",
                  "| class layer quantized | " + " | ".join(f"{b}-bit" for b in bits)
                  + " | bits needed |", "|---|" + "---:|" * (len(bits) + 1)]
        keys = {"per-tensor": f"{cl['scheme']}/tensor/{{b}}"}
        keys.update({v: f"{cl['scheme']}/{v}/{{b}}" for v in ("class-groups", "random-groups",
                                                              "per-class")})
        for v, pat in keys.items():
            cells = []
            for b in bits:
                r = by.get(pat.format(b=b))
                cells.append(f"{100 * r['mAP']:.2f}" if r and r["status"] == "ok" else "")
            need = cl["bits_needed"].get(v)
            need_s = need if need is not None else f"> {max(bits)}"
            lines.append(f"| {v} | " + " | ".join(cells) + f" | {need_s} |")
    from lowbit.studies.report import interval_note, run_info_line

    lines += ["", "## Every row with its intervals", "", *format_intervals(rows), "",
              interval_note(res.get("bootstrap")), "", run_info_line(res.get("run_info"))]
    return "\n".join(lines)


def format_intervals(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: each row's ``mAP [lo, hi]`` and ``drop [lo, hi]`` (points of %)."""
    from lowbit.studies.report import drop_cell, map_cell

    lines = ["| row | mAP [95% CI] | drop vs FP32 [paired 95% CI] | ± drop |",
             "|---|---:|---:|---:|"]
    for r in rows:
        if r.get("status") != "ok":
            continue
        hw = r.get("drop_half_width")
        lines.append(f"| {r['key']} | {map_cell(r)} | {drop_cell(r)} | "
                     f"{'-' if hw is None else f'{100 * hw:.2f}'} |")
    return lines


def _plot(res: dict[str, Any], bits: Sequence[int], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    combos = sorted({(r["scheme"], r["granularity"]) for r in rows
                     if r["scheme"] != "fp32" and "variant" not in r})
    for s, g in combos:
        pts = sorted((r["bits"], 100 * r["mAP"]) for r in rows if r["scheme"] == s
                     and r.get("granularity") == g and "variant" not in r)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if g == "tensor" else "s--",
                label=f"{s} / {g}", ms=4)
    for v in ("class-groups", "random-groups"):
        pts = sorted((r["bits"], 100 * r["mAP"]) for r in rows if r.get("variant") == v)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "x:", label=v, ms=6)
    fp = [r for r in rows if r["scheme"] == "fp32"]
    if fp:
        ax.axhline(100 * fp[0]["mAP"], color="k", ls="--", lw=1, label="FP32")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("VOC07 mAP (%)")
    ax.set_xticks(list(bits))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
