"""`lowbit compare` and `lowbit datafree` on a tiny setting (tiny digits devkit, width 0.125).

Oracles are computed here independently: zero shares by quantizing the checkpoints' weights
with the quantizer functions, data-free statistics by plain Python loops over rows and blocks.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from lowbit.cli import main
from lowbit.quant import lbw_exact
from lowbit.studies.compare import compare
from lowbit.studies.methods import DEFAULT_METHODS, METHODS, Method
from lowbit.studies.rows import Budget
from lowbit.train.checkpoint import load_checkpoint, resolve_checkpoint
from tests._tiny import remember_fp32_run, tiny_fp32_run, write_tiny_config

# latency is measured in test_a_failing_method_is_recorded_and_the_rest_run (ONNX export of
# every row would double this module's time)
ARGS = ["--qat-iters", "1", "--calib-images", "2", "--no-latency", "--json"]


@pytest.fixture(scope="module")
def cmp_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``compare CONFIG`` (trains the FP32 run itself) with every default method."""
    folder = tmp_path_factory.mktemp("compare")
    cfg = write_tiny_config(folder)
    assert main(["compare", str(cfg), "--out", str(folder / "out"), *ARGS]) == 0
    remember_fp32_run(folder / "out" / "runs" / "fp32")
    return folder


def _rows(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads((out / "results.json").read_text())["rows"]}


def test_a_row_per_method_with_finite_numbers(cmp_out: Path) -> None:
    rows = _rows(cmp_out / "out")
    want = {"fp32"} | {f"{n}@{METHODS[n].bits}" for n in DEFAULT_METHODS}
    assert set(rows) == want
    fp = rows["fp32"]["mAP"]
    for key, r in rows.items():
        assert r["status"] == "ok", (key, r.get("error"))
        assert 0.0 <= r["mAP"] <= 1.0, key
        assert r["drop"] == pytest.approx(fp - r["mAP"]), key
        assert 0.0 <= r["zero_share"] <= 1.0, key
        assert r["latency_ms"] is None and "not measured" in r["latency_note"]
    # memory: b bits per conv weight plus one byte per layer (demo convention) against 32 bits
    assert rows["fp32"]["conv_ratio"] == 1.0
    assert rows["lbw-exact@4"]["conv_ratio"] == pytest.approx(8.0, rel=0.01)
    assert rows["twn@2"]["conv_ratio"] == pytest.approx(16.0, rel=0.01)
    assert rows["uniform-ptq@8"]["conv_ratio"] == pytest.approx(4.0, rel=0.01)
    # mixed: per-layer bits within the uniform 4-bit model's memory
    assert rows["mixed@4"]["conv_weight_bytes"] <= rows["lbw-exact@4"]["conv_weight_bytes"]
    md = (cmp_out / "out" / "results.md").read_text()
    assert sum(1 for line in md.splitlines() if line.startswith("| ")) == len(rows) + 1
    with Image.open(cmp_out / "out" / "map_vs_memory.png") as im:
        assert im.format == "PNG" and im.size == (700, 450)


def test_zero_share_is_a_direct_count(cmp_out: Path) -> None:
    """lbw-exact's zero share from the QAT checkpoint's float weights, quantized here."""
    r = _rows(cmp_out / "out")["lbw-exact@4"]
    state = load_checkpoint(resolve_checkpoint(r["run_dir"])).model_state
    convs = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 4]
    zeros = total = 0
    for k in convs:
        wq, _ = lbw_exact(state[k], 4)
        zeros += int((wq == 0).sum())
        total += wq.numel()
    assert r["zero_share"] == pytest.approx(zeros / total)
    assert r["conv_weights"] == total


def test_inq_row_ends_with_every_weight_frozen_on_the_start_grid(cmp_out: Path) -> None:
    """INQ's buffers in the QAT checkpoint: every mask full (the last stage is reached by the
    end of the 1-iteration budget), the grid exponent n1 = floor(log2(4 max|W| / 3)) of the
    FP32 weights INQ started from, and every frozen value on that 4-bit grid."""
    from lowbit.runs import load_run

    r = _rows(cmp_out / "out")["inq@4"]
    assert r["status"] == "ok" and math.isfinite(r["mAP"])
    state = load_checkpoint(resolve_checkpoint(r["run_dir"])).model_state
    fp32 = load_checkpoint(resolve_checkpoint(cmp_out / "out" / "runs" / "fp32")).model_state
    convs = [k for k, v in fp32.items() if k.endswith(".weight") and v.dim() == 4]
    assert convs
    for k in convs:
        layer = k[:-len(".weight")]
        mask = state[f"{layer}.weight_quant.mask"]
        frozen = state[f"{layer}.weight_quant.frozen"]
        assert mask.shape == fp32[k].shape and bool(mask.all()), layer
        n1 = math.floor(math.log2(4 * float(fp32[k].abs().max()) / 3))
        assert int(state[f"{layer}.weight_quant.exponent"]) == n1, layer
        levels = {0.0} | {s * 2.0 ** e for e in range(n1 - 3, n1 + 1) for s in (1, -1)}
        assert set(frozen.reshape(-1).tolist()) <= levels, layer
    _, _, model = load_run(Path(r["run_dir"]))
    import lowbit.nn as L

    for name, layer in L.quant_layers(model):  # what was evaluated and exported
        assert torch.equal(layer.frozen.values, state[f"{name}.weight_quant.frozen"])
        assert layer.frozen.kind == "pot"


def test_mixed_row_records_a_sensitivity_assignment_within_budget(cmp_out: Path) -> None:
    from lowbit.runs import load_run

    rows = _rows(cmp_out / "out")
    r = rows["mixed@4"]
    assert r["status"] == "ok" and math.isfinite(r["mAP"])
    assign, sens = r["mixed_assignment"], r["mixed_sensitivity"]
    assert set(assign) == set(sens) and len(assign) == 26  # every conv of the tiny R-FCN
    assert set(assign.values()) <= {2, 3, 4, 6, 8}
    assert r["mixed_assigned_bytes"] <= r["mixed_budget_bytes"]
    # the budget is uniform 4-bit LBW: ceil(numel * 4 / 8) + 4 bytes per conv
    state = load_checkpoint(resolve_checkpoint(r["run_dir"])).model_state
    numel = {k[:-len(".weight")]: v.numel() for k, v in state.items()
             if k.endswith(".weight") and v.dim() == 4}
    assert r["mixed_budget_bytes"] == sum(math.ceil(n * 4 / 8) + 4 for n in numel.values())
    assert r["mixed_assigned_bytes"] == sum(math.ceil(numel[k] * b / 8) + 4
                                            for k, b in assign.items())
    for name, costs in sens.items():
        assert set(costs) == {"2", "3", "4", "6", "8"}
        assert all(math.isfinite(c) and c >= 0 for c in costs.values()), name
    _, _, model = load_run(Path(r["run_dir"]))  # the trained model has those bits
    import lowbit.nn as L

    assert {n: lay.bits for n, lay in L.quant_layers(model)} == assign


def _fragile_rfcn(fragile: bool) -> torch.nn.Module:
    """A tiny random R-FCN; ``fragile``: rpn.head.cls_logits gets a weight of 1000 on an input
    channel that is always 0 (rpn.head.conv's channel 0 is zeroed, bias -1, then ReLU). The
    FP32 outputs are unchanged, but the outlier stretches the layer's power-of-two grid so that
    few bits zero its ordinary weights."""
    from lowbit.detection.registry import create_model

    torch.manual_seed(0)
    m = create_model("rfcn_resnet18", 10, width=0.125).eval()
    if fragile:
        with torch.no_grad():
            m.rpn.head.conv.weight[0].zero_()
            m.rpn.head.conv.bias[0] = -1.0
            m.rpn.head.cls_logits.weight[:, 0] = 1000.0
    return m


def _images() -> list[torch.Tensor]:
    return [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def test_mixed_gives_a_fragile_layer_more_bits() -> None:
    from lowbit.studies.mixed import plan_mixed

    name = "rpn.head.cls_logits"
    _, plain = plan_mixed(_fragile_rfcn(False), [_images()], 4)
    quant, frag = plan_mixed(_fragile_rfcn(True), [_images()], 4)
    assert plain["mixed_assignment"][name] <= 4
    assert frag["mixed_assignment"][name] == 8
    s = frag["mixed_sensitivity"][name]  # objectness zeroed: relative error 1, 1 of 4 outputs
    assert s["2"] == s["4"] == pytest.approx(0.25) and s["8"] < 0.1
    for info in (plain, frag):
        assert info["mixed_assigned_bytes"] <= info["mixed_budget_bytes"]
    assert quant["overrides"][name] == {"bits": 8} and quant["method"] == "lbw-exact"
    # deterministic
    assert plan_mixed(_fragile_rfcn(True), [_images()], 4)[1] == frag


def test_output_metric_is_the_mean_relative_mse_of_the_raw_outputs() -> None:
    """OutputMSE against a hand computation on forward_raw (two-stage: FP32 proposals)."""
    from lowbit.studies.mixed import OutputMSE

    ref = _fragile_rfcn(False)
    ims = _images()
    metric = OutputMSE(ref, [ims[:1], ims[1:]])
    assert metric(copy.deepcopy(ref)) == 0.0
    other = copy.deepcopy(ref)
    with torch.no_grad():
        other.roi_heads.head.rfcn_cls.weight.mul_(1.5)
        other.rpn.head.bbox_pred.weight.add_(0.01)
    num, den = [0.0] * 4, [0.0] * 4
    with torch.no_grad():
        for im in ims:
            batch, sizes, _ = ref.transform([im], None)
            r = ref.forward_raw(batch, sizes)
            o = other.forward_raw(batch, sizes, proposals=r["proposals"])
            for k, key in enumerate(("objectness", "rpn_deltas", "class_logits", "box_deltas")):
                num[k] += float(((o[key].double() - r[key].double()) ** 2).sum())
                den[k] += float((r[key].double() ** 2).sum())
    want = [n / d for n, d in zip(num, den)]
    assert want[0] == 0.0 and want[1] > 0 and want[2] > 0
    assert metric.errors(other) == pytest.approx(want, rel=1e-9)
    assert metric(other) == pytest.approx(-sum(want) / 4, rel=1e-9)


def test_rerun_skips_finished_rows(cmp_out: Path, capsys: pytest.CaptureFixture) -> None:
    before = _rows(cmp_out / "out")
    capsys.readouterr()
    assert main(["compare", str(cmp_out / "tiny.yaml"), "--out", str(cmp_out / "out"),
                 *ARGS]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["skipped"]) == set(before)
    after = _rows(cmp_out / "out")
    for k in before:  # reused as they were, not recomputed
        assert after[k]["seconds"] == before[k]["seconds"]
        assert after[k]["mAP"] == before[k]["mAP"]


def test_a_failing_method_is_recorded_and_the_rest_run(
        cmp_out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "broken", Method(
        "broken", "ptq", "a recipe naming no quantizer", "test",
        lambda b: {"method": "no-such-quantizer", "bits": b}, bits=4, bit_range=(4, 4)))
    out = cmp_out / "out_fail"
    res = compare(cmp_out / "out" / "runs" / "fp32", out, methods="broken,kmeans-df",
                  latency=True, latency_iters=1, calib_images=2, progress=False)
    rows = {r["key"]: r for r in res["rows"]}
    assert list(rows) == ["fp32", "broken@4", "kmeans-df@4"]
    assert rows["broken@4"]["status"] == "failed"
    assert "no-such-quantizer" in rows["broken@4"]["error"]
    assert rows["broken@4"]["error"].startswith("broken@4:")
    assert rows["kmeans-df@4"]["status"] == "ok" and math.isfinite(rows["kmeans-df@4"]["mAP"])
    for key, kind in (("fp32", "fp32"), ("kmeans-df@4", "int8-qdq")):
        assert math.isfinite(rows[key]["latency_ms"]) and rows[key]["latency_ms"] > 0
        assert rows[key]["latency_onnx"] == kind and rows[key]["latency_note"] is None
    assert "failed" in (out / "results.md").read_text()
    # the failed row is retried on a rerun, the finished ones are skipped
    res2 = compare(cmp_out / "out" / "runs" / "fp32", out, methods="broken,kmeans-df",
                   latency=True, latency_iters=1, calib_images=2, progress=False)
    assert set(res2["skipped"]) == {"fp32", "kmeans-df@4"}


def test_cli_errors_name_the_problem(cmp_out: Path, capsys: pytest.CaptureFixture) -> None:
    run = str(cmp_out / "out" / "runs" / "fp32")
    assert main(["compare", run, "--methods", "nope", "--out", str(cmp_out / "e")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    lbw = _rows(cmp_out / "out")["lbw-exact@4"]["run_dir"]
    assert main(["compare", lbw, "--out", str(cmp_out / "e")]) == 2
    assert "quantized run" in capsys.readouterr().err


# ------------------------------------------------------------------------------- data-free


def _loop_stats(layers: list, block: int = 16) -> dict[str, float]:
    """Independent oracle of datafree.weight_stats: plain loops over rows and blocks."""
    zeros = numel = zb = nb = 0
    rng = lev = 0.0
    for lay in layers:
        rows = lay.values.reshape(lay.values.shape[0], -1).tolist()
        for row in rows:
            zeros += sum(1 for v in row if v == 0)
            numel += len(row)
            for i in range(0, len(row), block):
                nb += 1
                zb += all(v == 0 for v in row[i:i + block])
        for g in lay.groups:
            vals = [v for o in g for v in rows[o]]
            mags = [abs(v) for v in vals if v != 0]
            r = math.log2(max(mags) / min(mags)) if mags else 0.0
            rng += r * len(vals)
            lev += len(set(vals)) / 2 ** lay.bits * len(vals)
    return {"zero_share": zeros / numel, "zero_block_share": zb / nb,
            "range_bits": rng / numel, "levels_used": lev / numel}


def test_datafree_grid_stats_and_clustering(cmp_out: Path) -> None:
    from lowbit.runs import fp32_model, load_base
    from lowbit.studies.datafree import datafree, quantize_model, weight_stats

    run = cmp_out / "out" / "runs" / "fp32"
    out = cmp_out / "df"
    rc = main(["datafree", str(run), "--out", str(out), "--schemes", "uniform",
               "--granularity", "tensor", "--bits", "3", "--class-groups", "3",
               "--test-images", "2", "--json"])
    assert rc == 0
    res = json.loads((out / "datafree.json").read_text())
    rows = {r["key"]: r for r in res["rows"]}
    assert set(rows) == {"fp32", "uniform/tensor/3", "uniform/class-groups/3",
                         "uniform/random-groups/3", "uniform/per-class/3"}
    assert res["settings"]["test_images"] == 2
    for k, r in rows.items():
        assert r["status"] == "ok", (k, r.get("error"))
        assert 0.0 <= r["mAP"] <= 1.0
        assert r["drop"] == pytest.approx(rows["fp32"]["mAP"] - r["mAP"])
    # the statistics equal an independent loop over the same quantized weights
    base = load_base(run, out, progress=False)
    layers = quantize_model(fp32_model(base), "uniform", 3, "tensor")
    for stat, v in _loop_stats(layers).items():
        assert rows["uniform/tensor/3"][stat] == pytest.approx(v, rel=1e-9, abs=1e-12), stat
    chan = quantize_model(fp32_model(base), "log", 3, "channel")
    got = weight_stats(chan)
    for stat, v in _loop_stats(chan).items():
        assert got[stat] == pytest.approx(v, rel=1e-9, abs=1e-12), stat
    # uniform per tensor at 3 bits is round(w / s) * s with s = max|w| / 3 (independent)
    layers = quantize_model(fp32_model(base), "uniform", 3, "tensor")
    w = dict(fp32_model(base).named_modules())[layers[0].name].weight.detach()
    s = w.abs().max() / 3
    assert torch.allclose(layers[0].values, torch.round(w / s) * s, atol=1e-7)
    cl = res["clustering"]
    assert cl["layer"].endswith("rfcn_cls") and cl["n_groups"] == 3
    assert sorted(c for g in cl["clusters"] for c in g) == sorted(
        c for g in cl["random"] for c in g)
    assert len(sorted(c for g in cl["clusters"] for c in g)) == 11  # 10 digits + background
    with Image.open(out / "datafree.png") as im:
        assert im.format == "PNG"
    # every row: detections files, mAP [lo, hi]; drops paired against FP32 on the same images
    from lowbit.eval.intervals import bootstrap_map, match_results_dir, paired_bootstrap
    from lowbit.studies.datafree import _Subset

    gt = _Subset(base.test_ds, 2)
    from lowbit.eval.intervals import ground_truth_arrays

    g = ground_truth_arrays(gt)
    fp = match_results_dir(g, rows["fp32"]["dets_dir"])
    for k, r in rows.items():
        m = match_results_dir(g, r["dets_dir"])
        iv = bootstrap_map(m)
        assert r["mAP_ci"] == pytest.approx([iv.lo, iv.hi]), k
        assert iv.estimate == pytest.approx(r["mAP"], abs=1e-12), k
        if k != "fp32":
            d = paired_bootstrap(fp, m)
            assert r["drop_ci"] == pytest.approx([d.lo, d.hi]), k
    assert res["bootstrap"]["n_boot"] >= 1000 and res["run_info"]["threads"] >= 1
    md = (out / "datafree.md").read_text()
    assert "Every row with its intervals" in md and "paired" in md
    # resumable: the same call reuses every row
    again = datafree(run, out, schemes=("uniform",), granularities=("tensor",), bits=(3,),
                     class_groups=3, test_images=2, progress=False)
    assert [r["seconds"] for r in again["rows"]] == [r["seconds"] for r in res["rows"]]


def test_pot_per_channel_is_lbw_exact_per_row() -> None:
    from lowbit.studies.datafree import quantize_groups

    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, 3, 3, generator=g) * torch.tensor([1.0, 0.1, 3.0, 0.01, 0.5])[
        :, None, None, None]
    q = quantize_groups(w, "pot", 4, [[i] for i in range(5)])
    for o in range(5):
        assert torch.equal(q[o], lbw_exact(w[o], 4)[0])


def test_cluster_classes_recovers_planted_groups() -> None:
    from lowbit.studies.datafree import class_specific_layers, cluster_classes

    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(3, 8, generator=g)
    owner = [0, 1, 0, 2, 1, 2, 0]  # class -> planted group
    per = 4  # output channels per class
    w = torch.stack([dirs[owner[c]] * (1 + 0.01 * torch.randn(8, generator=g)) for c in
                     range(len(owner)) for _ in range(per)])
    groups = cluster_classes(w[:, :, None, None], per, 3)
    want = sorted(sorted(c for c, o in enumerate(owner) if o == k) for k in range(3))
    assert sorted(groups) == want
    net = torch.nn.Sequential()
    net.add_module("rfcn_cls", torch.nn.Conv2d(8, 7 * 4, 1))
    assert class_specific_layers(net, 6) == {"rfcn_cls": 4}


@pytest.fixture(scope="module")
def frcnn_cmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """002's workflow on a tiny Faster R-CNN: clip training with the extra loss, and SVD of
    the fully connected head before clip PTQ."""
    folder = tmp_path_factory.mktemp("compare_frcnn")
    cfg = write_tiny_config(folder)
    cfg.write_text(cfg.read_text().replace("name: rfcn_resnet18", "name: faster_rcnn_resnet18")
                   .replace("k: 3", "representation_size: 32"))
    assert main(["compare", str(cfg), "--out", str(folder / "out"), "--methods",
                 "clip-ptq,clip-qat,clip-ptq-svd", *ARGS]) == 0
    return folder / "out"


def test_clip_qat_trains_with_the_extra_loss_and_deploys_8_bit(frcnn_cmp: Path) -> None:
    from lowbit.runs import load_run

    r = _rows(frcnn_cmp)["clip-qat@8"]
    assert r["status"] == "ok", r.get("error")
    run = Path(r["run_dir"])
    train_logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"train"' in line]
    assert train_logs and all(e["loss_quant"] > 0 for e in train_logs)
    # the evaluated model is the converted one: every layer on its 8-bit grid from the clip
    _, _, model = load_run(run)
    import lowbit.nn as L

    layers = L.quant_layers(model)
    assert layers
    for name, layer in layers:
        fr = layer.frozen
        codes = fr.values.double() / fr.scale.double()
        assert torch.allclose(codes, codes.round(), atol=1e-6), name
        assert float(codes.round().abs().max()) <= 127, name


def test_clip_ptq_svd_replaces_the_fc_head(frcnn_cmp: Path) -> None:
    rows = _rows(frcnn_cmp)
    svd, plain = rows["clip-ptq-svd@8"], rows["clip-ptq@8"]
    assert svd["status"] == "ok" and plain["status"] == "ok"
    # fc6 (C*7*7 -> 32) always saves at 90% energy; fc7 (32 x 32) and the predictors only
    # when their rank drops far enough
    short = {n.rsplit(".", 1)[-1] for n in svd["svd_layers"]}
    assert "fc6" in short and short <= {"fc6", "fc7", "cls_score", "bbox_pred"}
    assert svd["svd_params_after"] < svd["svd_params_before"]
    assert svd["all_param_bytes"] < plain["all_param_bytes"]
    assert svd["conv_weight_bytes"] == plain["conv_weight_bytes"]  # convs untouched


@pytest.mark.parametrize("name", ["rfcn_resnet18", "faster_rcnn_resnet18", "yolov3_tiny_darknet",
                                  "ssd_lite_vgg"])
def test_latency_trunk_per_detector(name: str, tmp_path: Path) -> None:
    """compare's latency runs a real onnxruntime session on each detector's trunk, whose
    outputs equal the PyTorch trunk's; SSD (not exportable) is reported, not crashed on."""
    from lowbit.detection.registry import create_model
    from lowbit.export.latency import NotExportable, _prepared, _Trunk, measure_latency
    from lowbit.export.onnx import ort_session

    torch.manual_seed(0)
    kw = {"width": 0.125, "image_size": 64} if name.startswith(("yolo", "ssd")) else \
        {"width": 0.125}
    model = create_model(name, 10, **kw).eval()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    if name.startswith("ssd"):
        with pytest.raises(NotExportable, match="SSD"):
            measure_latency(model, images, tmp_path, int8=False, iters=1)
        return
    ms, kind = measure_latency(model, images, tmp_path, int8=False, iters=2)
    assert kind == "fp32" and ms > 0
    batch = _prepared(model, images[:1])[0]
    sess = ort_session(tmp_path / "trunk.fp32.onnx")
    got = sess.run(None, {sess.get_inputs()[0].name: batch.numpy()})
    with torch.no_grad():
        want = _Trunk(model).eval()(batch)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.allclose(torch.from_numpy(g), w, atol=1e-4, rtol=1e-4)


def test_qn_a8_trains_8_bit_qn_activations_in_three_phases(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """003's W/A8 row: QN activations (not PACT) at every quantized layer's input, and the
    engine runs the three phases over the budget (30 / 30 / 40% of 10 iterations)."""
    from lowbit.nn import QNActQuant, act_quantizers, quant_layers
    from lowbit.runs import load_run

    fp32 = tiny_fp32_run(tmp_path_factory)  # the session's run: no FP32 training here
    assert main(["compare", str(fp32), "--out", str(tmp_path / "out"), "--methods", "qn-a8",
                 "--qat-iters", "10", "--calib-images", "2", "--no-latency", "--json"]) == 0
    r = _rows(tmp_path / "out")["qn-a8@3"]
    assert r["status"] == "ok", r.get("error")
    assert math.isfinite(r["mAP"])
    run = Path(r["run_dir"])
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"quant_schedule"' in line]
    assert [(e["iteration"], e["qn_phase"]) for e in events] == [
        (0, "weights"), (3, "activations"), (6, "both")]
    _, _, model = load_run(run)
    acts = [aq for _, aq in act_quantizers(model)]
    assert acts and all(isinstance(aq, QNActQuant) and aq.bits == 8 for aq in acts)
    assert len(acts) == len(quant_layers(model))
    # initialised from data: 256 unsigned levels (255 signed ones where the input has
    # negative values, e.g. the normalised image), one sorted bias between neighbours
    for aq in acts:
        assert bool(aq.initialized)
        assert aq.levels.numel() == (255 if float(aq.levels[0]) < 0 else 256)
        assert aq.biases.numel() == aq.levels.numel() - 1
        assert bool((aq.biases[1:] >= aq.biases[:-1]).all())


def test_per_tensor_contrast_row_has_one_weight_range_per_layer() -> None:
    """002's contrast without clipping: ``uniform-ptq-tensor`` quantizes each weight tensor on
    one symmetric grid (max|W| / 127), ``uniform-ptq`` per output channel."""
    import lowbit.nn as L

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(2, 3, 8, 8)
    for name, per_channel in (("uniform-ptq-tensor", False), ("uniform-ptq", True)):
        m = L.prepare(copy.deepcopy(net), METHODS[name].recipe(8)).eval()
        L.calibrate(m, [(x, None)])
        L.convert(m)
        for lname, layer in L.quant_layers(m):
            w = layer.weight.detach().double()
            got = layer.frozen.values.double()
            if per_channel:
                amax = w.reshape(w.shape[0], -1).abs().amax(1)
                step = (amax / 127).reshape(-1, *([1] * (w.dim() - 1)))
            else:
                step = w.abs().max() / 127
            want = torch.round(w / step) * step  # a loop-free oracle of the symmetric grid
            assert torch.allclose(got, want, atol=1e-6), (name, lname)


def test_a_run_of_some_methods_keeps_the_other_rows(cmp_out: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    before = _rows(cmp_out / "out")
    capsys.readouterr()
    assert main(["compare", str(cmp_out / "tiny.yaml"), "--out", str(cmp_out / "out"),
                 "--methods", "twn", *ARGS]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["skipped"]) == {"fp32", "twn@2"}
    assert set(res["kept"]) == set(before) - {"fp32", "twn@2"}
    after = _rows(cmp_out / "out")
    assert set(after) == set(before)
    assert [r["key"] for r in res["rows"]][0] == "fp32"
    md = (cmp_out / "out" / "results.md").read_text()
    assert sum(1 for line in md.splitlines() if line.startswith("| ")) == len(before) + 1


def test_dorefa_keeps_exactly_the_convs_without_batchnorm_float(cmp_out: Path) -> None:
    """DoReFa drops each layer's scale: the convs no BatchNorm follows stay float. On R-FCN
    those are the RPN and the position-sensitive head (the hand-written rule it replaced), on
    YOLOv3 the three output convs, on SSD the twelve loc/conf convs."""
    from lowbit.detection.registry import create_model
    from lowbit.studies.methods import _plan_dorefa

    r = _rows(cmp_out / "out")["dorefa@4"]
    assert r["status"] == "ok"
    rfcn = create_model("rfcn_resnet18", 10, width=0.125)
    want = sorted(n for n, m in rfcn.named_modules() if isinstance(m, torch.nn.Conv2d)
                  and n.startswith(("rpn.", "roi_heads.")))
    assert len(want) == 6 and r["dorefa_float_layers"] == want
    yolo = create_model("yolov3_tiny_darknet", 10)
    assert _plan_dorefa(yolo, [], 4)[1]["dorefa_float_layers"] == [
        f"head.branches.{i}.1" for i in range(3)]
    ssd = create_model("ssd_lite_vgg", 10)
    got = _plan_dorefa(ssd, [], 4)[1]["dorefa_float_layers"]
    assert got == sorted(f"head.{k}.{i}" for k in ("loc", "conf") for i in range(6))


# ------------------------------------------------------------------------------- intervals


def test_every_row_has_intervals_and_rescorable_detections(cmp_out: Path) -> None:
    from lowbit.eval.intervals import bootstrap_map, match_results_dir, paired_bootstrap
    from lowbit.eval.voc import load_voc_ground_truth, voc_eval_files

    res = json.loads((cmp_out / "out" / "results.json").read_text())
    assert res["bootstrap"]["n_boot"] >= 1000 and res["bootstrap"]["reference"] == "fp32"
    assert res["run_info"]["threads"] >= 1 and "load_average_start" in res["run_info"]
    rows = {r["key"]: r for r in res["rows"]}
    from lowbit.config import load_config

    data_root = Path(load_config(Path(res["fp32_run"]) / "config.yaml").data.root)
    gt = load_voc_ground_truth(data_root, "test")
    fp = match_results_dir(gt, rows["fp32"]["dets_dir"])
    for key, r in rows.items():
        assert r["status"] == "ok", key
        # the files re-score to the row's mAP with the plain point metric
        assert voc_eval_files(data_root, "test", r["dets_dir"], metric="07").map == \
            pytest.approx(r["mAP"], abs=1e-12), key
        m = match_results_dir(gt, r["dets_dir"])
        iv = bootstrap_map(m)
        assert r["mAP_ci"] == pytest.approx([iv.lo, iv.hi]), key
        if key == "fp32":
            assert "drop_ci" not in r
            continue
        d = paired_bootstrap(fp, m)
        assert r["drop_ci"] == pytest.approx([d.lo, d.hi]), key
        assert r["drop"] == pytest.approx(d.estimate, abs=1e-12)
        assert r["drop_excludes_zero"] == (d.lo > 0 or d.hi < 0)
        assert r["drop_half_width"] == pytest.approx((d.hi - d.lo) / 2)
    md = (cmp_out / "out" / "results.md").read_text()
    assert "mAP [95% CI]" in md and "paired" in md and "load average" in md


def _merge_worker(path: str, worker: int, n: int) -> None:
    from lowbit.runs import merge_rows

    for k in range(n):
        merge_rows(Path(path), {"fp32_run": "/run", "settings": {"w": worker}},
                   [{"key": f"w{worker}-{j}", "value": j} for j in range(k + 1)])


def test_concurrent_writers_never_lose_rows(tmp_path: Path) -> None:
    """Real processes merging rows into one results.json at the same time."""
    import multiprocessing as mp

    path = tmp_path / "results.json"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_merge_worker, args=(str(path), w, 6)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = json.loads(path.read_text())["rows"]
    assert sorted(r["key"] for r in rows) == sorted(f"w{w}-{j}" for w in range(4)
                                                    for j in range(6))
    assert not list(tmp_path.glob("*.tmp"))


def test_bits_nobody_accepts_exit_2(cmp_out: Path, capsys: pytest.CaptureFixture) -> None:
    run = str(cmp_out / "out" / "runs" / "fp32")
    for bad in ("0", "99"):
        assert main(["compare", run, "--bits", bad, "--out", str(cmp_out / "e")]) == 2
        assert f"--bits {bad}" in capsys.readouterr().err
    assert main(["compare", run, "--seeds", "0", "--out", str(cmp_out / "e")]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["sweep-mu", run, "--bits", "99", "--out", str(cmp_out / "e")]) == 2
    assert "--bits 99" in capsys.readouterr().err


def test_seeds_repeat_each_qat_row(cmp_out: Path) -> None:
    import statistics

    out = cmp_out / "out_seeds"
    res = compare(cmp_out / "out" / "runs" / "fp32", out, methods="lbw-exact,kmeans-df",
                  budget=Budget(iters=1),
                  calib_images=2, latency=False, progress=False, seeds=2)
    rows = {r["key"]: r for r in res["rows"]}
    lbw = rows["lbw-exact@4"]
    assert len(lbw["seed_runs"]) == 2
    assert len({s["run_dir"] for s in lbw["seed_runs"]}) == 2
    assert [s["seed"] for s in lbw["seed_runs"]] == [0, 1]
    maps = [s["mAP"] for s in lbw["seed_runs"]]
    assert lbw["mAP_seeds"] == maps and lbw["mAP"] == maps[0]
    assert lbw["mAP_seed_mean"] == pytest.approx(statistics.fmean(maps))
    assert lbw["mAP_seed_sd"] == pytest.approx(statistics.stdev(maps))
    assert "seed_runs" not in rows["kmeans-df@4"]  # PTQ / data-free rows are not repeated
    assert "seeds " in (out / "results.md").read_text()


def test_per_channel_lbw_row_is_opt_in() -> None:
    m = METHODS["lbw-exact-ch"]
    assert "lbw-exact-ch" not in DEFAULT_METHODS and m.kind == "qat"
    assert m.recipe(5) == {"method": "lbw-exact", "bits": 5, "params": {"per_channel": True}}


def test_datafree_bits_follow_the_schemes_registry_ranges(tmp_path: Path) -> None:
    from lowbit.studies.datafree import datafree

    # uniform/log/pot accept 2..8 (lowbit.quant's registry), so 1 is refused with them...
    for bad, schemes in ((1, ("uniform", "kmeans")), (9, ("kmeans",)), (0, ("pot",))):
        with pytest.raises(ValueError, match=rf"data-free bits .*got {bad}"):
            datafree(tmp_path / "no-run", tmp_path / "o", schemes=schemes, bits=[bad])
    # ...while k-means alone accepts 1 bit: the check passes and the missing run is named next
    with pytest.raises(ValueError, match="no-run: datafree needs a trained FP32 run folder"):
        datafree(tmp_path / "no-run", tmp_path / "o", schemes=("kmeans",), bits=[1])
