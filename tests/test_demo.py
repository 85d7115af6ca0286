"""`lowbit demo` end to end on a tiny setting: every run, the report, stats, the picture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from lowbit.cli import main
from lowbit.quant import lbw_exact
from lowbit.train.checkpoint import load_checkpoint, resolve_checkpoint


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--quick", "--out", str(out), "--train-images", "8", "--test-images", "4",
               "--size", "64", "--epochs", "1", "--qat-epochs", "1", "--width", "0.125",
               "--batch-size", "4", "--pretrain-steps", "3", "--pretrain-crops", "22", "--json"])
    assert rc == 0
    return out


def test_results_json_has_every_run(demo_out: Path) -> None:
    res = json.loads((demo_out / "results.json").read_text())
    assert set(res["runs"]) == {"fp32", "fp32_ft", "lbw4", "lbw5", "lbw6", "lbw6_mu"}
    for name, r in res["runs"].items():
        assert 0.0 <= r["mAP"] <= 1.0 + 1e-9, name
        assert math.isfinite(r["drop"])
        assert 0.0 <= r["zero_share"] <= 1.0
    # weight memory: bits x weights (+ one exponent per layer) against 32 bits
    assert res["runs"]["lbw4"]["conv_ratio"] == pytest.approx(8.0, rel=0.01)
    assert res["runs"]["lbw6"]["conv_ratio"] == pytest.approx(32 / 6, rel=0.01)
    assert res["runs"]["fp32"]["conv_ratio"] == 1.0
    report = (demo_out / "report.md").read_text()
    assert "Table 3.1" in report and "6-bit LBW (exact)" in report


def test_phase_one_pretrains_the_backbone_the_fp32_run_starts_from(demo_out: Path) -> None:
    import yaml
    from safetensors.torch import load_file

    from lowbit.detection import create_model

    res = json.loads((demo_out / "results.json").read_text())
    pre = res["pretrain"]
    path = Path(pre["path"])
    assert path.is_file() and path.parent == demo_out / "pretrained"
    assert 0.0 <= pre["accuracy"] <= 1.0 and pre["steps"] == 3 and not pre["reused"]
    cfg = yaml.safe_load((demo_out / "runs" / "fp32" / "config.yaml").read_text())
    assert cfg["model"]["kwargs"]["backbone_weights"] == str(path)
    for run in ("lbw4", "lbw6_mu"):  # QAT phases start from the FP32 run, not the file
        qcfg = yaml.safe_load((demo_out / "runs" / run / "config.yaml").read_text())
        assert "backbone_weights" not in qcfg["model"]["kwargs"]
    # the file is a backbone state_dict the demo's detector loads key for key (strict)
    sd = load_file(str(path))
    det = create_model("rfcn_resnet18", 10, width=0.125, k=3, backbone_weights=str(path))
    own = det.state_dict()
    loaded = [k for k in sd if "backbone." + k in own]
    assert loaded, "no key of the pretrained file names a backbone tensor of the detector"
    convs = [k for k in loaded if k.endswith("conv1.weight")]
    assert convs
    for k in convs:
        assert torch.equal(sd[k], own["backbone." + k]), k
    report = (demo_out / "report.md").read_text()
    assert "pretrained offline" in report and path.name in report


def test_stats_tables_sum_to_100_and_zero_row_is_a_direct_count(demo_out: Path) -> None:
    res = json.loads((demo_out / "results.json").read_text())
    assert len(res["stats"]) == 2
    for entry in res["stats"].values():
        for col in entry["table"].values():
            assert sum(col) == pytest.approx(100.0)
        # zero row of the 4-bit column: quantize the checkpoint's float weight independently
        ckpt = load_checkpoint(resolve_checkpoint(demo_out / "runs" / "lbw4"))
        w = ckpt.model_state[entry["layer"] + ".weight"]
        wq, _ = lbw_exact(w, 4)
        direct = 100.0 * float((wq == 0).sum()) / w.numel()
        assert entry["table"]["4-bit LBW"][0] == pytest.approx(direct)


def test_picture_is_a_png_of_the_expected_size(demo_out: Path) -> None:
    with Image.open(demo_out / "detections.png") as im:
        assert im.format == "PNG"
        # 2 models side by side, 2 images (quick preset), 64 px shown at 2x, 6 px gaps, title row
        assert im.size == (2 * 128 + 6, 16 + 2 * 128 + 6)


def test_stats_command_on_demo_runs(demo_out: Path, capsys: pytest.CaptureFixture) -> None:
    runs = demo_out / "runs"
    rc = main(["stats", str(runs / "fp32"), str(runs / "lbw4"), "--labels", "fp32,lbw4",
               "--layers", r"rpn", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["layers"]
    for lname, entry in res["layers"].items():
        for col in entry["table"].values():
            assert sum(col) == pytest.approx(100.0)
        ckpt = load_checkpoint(resolve_checkpoint(runs / "lbw4"))
        wq, _ = lbw_exact(ckpt.model_state[lname + ".weight"], 4)
        direct = 100.0 * float((wq == 0).sum()) / wq.numel()
        assert entry["table"]["lbw4"][0] == pytest.approx(direct)
        assert entry["stats"]["lbw4"]["sparsity"] == pytest.approx(direct / 100)
    assert main(["stats", str(runs / "fp32"), "--layers", "no-such-layer"]) == 2


def test_every_phase_has_intervals_and_rescorable_detections(demo_out: Path) -> None:
    from lowbit.eval.intervals import (
        bootstrap_map,
        ground_truth_arrays,
        match_results_dir,
        paired_bootstrap,
    )
    from lowbit.eval.voc import voc_eval_files

    res = json.loads((demo_out / "results.json").read_text())
    assert res["bootstrap"]["n_boot"] >= 1000 and res["bootstrap"]["reference"] == "fp32"
    assert res["run_info"]["threads"] >= 1 and "load_average_start" in res["run_info"]
    root = demo_out / "digits"
    matched = {}
    for name, r in res["runs"].items():
        run_dir = Path(r["run_dir"])
        files = sorted(p.name for p in run_dir.glob("comp4_det_test_*.txt"))
        assert len(files) == 10, name
        # any VOC evaluator re-scores the files to the phase's mAP
        assert voc_eval_files(root, "test", run_dir, metric="07").map == pytest.approx(
            r["mAP"], abs=1e-12)
        lo, hi = r["mAP_ci"]
        assert 0.0 <= lo <= hi <= 1.0 and r["mAP_half_width"] == pytest.approx((hi - lo) / 2)
        # the engine did not evaluate (final_eval false): the demo scored each phase once
        assert not json.loads((run_dir / "result.json").read_text())["metrics"]
        matched[name] = run_dir
    # the test split's ground truth from the files the demo wrote
    from lowbit.eval.voc import load_voc_ground_truth

    gt = load_voc_ground_truth(root, "test")
    assert gt.n_images == 4 and ground_truth_arrays is not None
    fp = match_results_dir(gt, matched["fp32"])
    assert res["runs"]["fp32"]["mAP_ci"] == pytest.approx(
        [bootstrap_map(fp).lo, bootstrap_map(fp).hi])
    for name in ("lbw4", "lbw5", "lbw6", "lbw6_mu"):
        r = res["runs"][name]
        d = paired_bootstrap(fp, match_results_dir(gt, matched[name]))
        assert r["drop_ci"] == pytest.approx([d.lo, d.hi])
        assert r["drop_excludes_zero"] == (d.lo > 0 or d.hi < 0)
    assert "drop_ci" not in res["runs"]["fp32"]
    report = (demo_out / "report.md").read_text()
    assert "mAP [95% CI]" in report and "paired" in report and "thread" in report


def test_eval_prints_the_interval(demo_out: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["eval", str(demo_out / "runs" / "lbw4"), "--json", "--boot", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    iv = out["interval"]
    assert iv["estimate"] == pytest.approx(out["metrics"]["mAP"], abs=1e-12)
    assert iv["lo"] <= iv["hi"] and iv["n_boot"] == 1000 and iv["n_images"] == 4
    res = json.loads((demo_out / "results.json").read_text())
    assert [iv["lo"], iv["hi"]] == pytest.approx(res["runs"]["lbw4"]["mAP_ci"])
    assert main(["eval", str(demo_out / "runs" / "lbw4"), "--boot", "-1"]) == 2


def test_noop_rerun_keeps_the_timings(demo_out: Path) -> None:
    before = json.loads((demo_out / "results.json").read_text())
    report_before = (demo_out / "report.md").read_text()
    rc = main(["demo", "--quick", "--out", str(demo_out), "--train-images", "8",
               "--test-images", "4", "--size", "64", "--epochs", "1", "--qat-epochs", "1",
               "--width", "0.125", "--batch-size", "4", "--pretrain-steps", "3",
               "--pretrain-crops", "22", "--json"])
    assert rc == 0
    after = json.loads((demo_out / "results.json").read_text())
    for name, r in before["runs"].items():
        assert after["runs"][name]["seconds"] == r["seconds"], name
        assert after["runs"][name]["mAP"] == r["mAP"]
    assert set(after["reused_phases"]) == set(before["runs"]) | {"pretrain"}
    assert after["pretrain"]["reused"] and after["pretrain"]["path"] == before["pretrain"]["path"]
    total = [ln for ln in report_before.splitlines() if "Total" in ln][0]
    first = total.split("Total ")[1].split(" min")[0]
    assert f"Total {first} min" in (demo_out / "report.md").read_text()


def test_paper_claims_agree_with_the_table_and_the_weights(demo_out: Path) -> None:
    from lowbit.runs import effective_weights, load_run

    res = json.loads((demo_out / "results.json").read_text())
    runs = res["runs"]
    claims = {c["claim"]: c for c in res["claims"]}
    d6 = next(c for k, c in claims.items() if k.startswith("6-bit drop"))
    # the same paired resamples as the table's drop interval (seed 0, B = 1000)
    assert d6["estimate"] == pytest.approx(runs["fp32"]["mAP"] - runs["lbw6"]["mAP"], abs=1e-9)
    assert d6["ci"] == pytest.approx(runs["lbw6"]["drop_ci"], abs=1e-12)
    g = next(c for k, c in claims.items() if k.startswith("4-bit drop larger"))
    assert g["estimate"] == pytest.approx(runs["lbw6"]["mAP"] - runs["lbw4"]["mAP"], abs=1e-9)
    assert g["ci"][0] <= g["estimate"] <= g["ci"][1]
    # verdicts follow the intervals
    lo, hi = d6["ci"]
    want = ("holds" if hi < 0.01 else "does not hold" if lo > 0.01 else "not resolved")
    assert d6["verdict"].startswith(want)
    # zero shares are direct counts of the 4-bit model's weights
    w4 = effective_weights(load_run(demo_out / "runs" / "lbw4").model)
    for label, st in res["stats"].items():
        z = next(c for k, c in claims.items() if k == f"4-bit LBW zero share, {label}")
        w = w4[st["layer"]]
        assert z["estimate"] == pytest.approx(int((w == 0).sum()) / w.numel())
    report = (demo_out / "report.md").read_text()
    assert "## The paper's claims, checked" in report


def test_claim_verdicts() -> None:
    from lowbit.studies.demo import _verdict

    assert _verdict(0.002, 0.008, 0.01, above_holds=False) == "holds"
    assert _verdict(0.012, 0.02, 0.01, above_holds=False) == "does not hold"
    assert _verdict(0.005, 0.02, 0.01, above_holds=False).startswith("not resolved")
    assert _verdict(0.001, 0.02, 0.0, above_holds=True) == "holds"
    assert _verdict(-0.02, -0.001, 0.0, above_holds=True) == "does not hold"
    assert _verdict(-0.01, 0.01, 0.0, above_holds=True).startswith("not resolved")


def test_fp32_control_is_fine_tuned_like_the_lbw_phases(demo_out: Path) -> None:
    """The control differs from an LBW phase only by having no quantizer, and every LBW
    drop against it is the paired bootstrap of the two phases' detection files."""
    import yaml

    from lowbit.eval.intervals import match_results_dir, paired_bootstrap
    from lowbit.eval.voc import load_voc_ground_truth

    runs_dir = demo_out / "runs"
    ctrl = yaml.safe_load((runs_dir / "fp32_ft" / "config.yaml").read_text())
    q4 = yaml.safe_load((runs_dir / "lbw4" / "config.yaml").read_text())
    assert ctrl["quant"] is None and q4["quant"] is not None
    assert ctrl["init"] == q4["init"] == str(runs_dir / "fp32")
    for section in ("optim", "train", "data", "model"):
        assert ctrl[section] == q4[section], section
    res = json.loads((demo_out / "results.json").read_text())
    runs = res["runs"]
    assert runs["fp32_ft"]["iterations"] == runs["lbw4"]["iterations"] > 0
    # the control's weights moved away from the FP32 run's (it was really fine-tuned)
    a = load_checkpoint(resolve_checkpoint(runs_dir / "fp32")).model_state
    b = load_checkpoint(resolve_checkpoint(runs_dir / "fp32_ft")).model_state
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert moved
    gt = load_voc_ground_truth(demo_out / "digits", "test")
    ref = match_results_dir(gt, runs_dir / "fp32_ft")
    for name in ("lbw4", "lbw5", "lbw6", "lbw6_mu"):
        d = paired_bootstrap(ref, match_results_dir(gt, runs_dir / name))
        r = runs[name]
        assert r["drop_vs_control"] == pytest.approx(runs["fp32_ft"]["mAP"] - r["mAP"],
                                                     abs=1e-9)
        assert r["drop_vs_control_ci"] == pytest.approx([d.lo, d.hi], abs=1e-12)
        assert r["drop_vs_control_excludes_zero"] == (d.lo > 0 or d.hi < 0)
    assert "drop_vs_control" not in runs["fp32"] and "drop_vs_control" not in runs["fp32_ft"]
    report = (demo_out / "report.md").read_text()
    assert "FP32 control" in report and "drop vs FP32 control" in report
    claims = [c["claim"] for c in res["claims"]]
    assert any("FP32 control" in c for c in claims)


def test_frozen_stages_keep_the_pretrained_values(demo_out: Path) -> None:
    """With the pretrained backbone the stem and layer1 stay frozen (freeze_at = 2, the
    paper's R-FCN): after FP32 training they still hold the file's values, layer2 moved."""
    from safetensors.torch import load_file

    res = json.loads((demo_out / "results.json").read_text())
    sd = load_file(res["pretrain"]["path"])
    state = load_checkpoint(resolve_checkpoint(demo_out / "runs" / "fp32")).model_state
    frozen = [k for k in sd if k.startswith(("conv1.", "bn1.", "layer1."))
              and "backbone." + k in state]
    assert frozen
    for k in frozen:
        assert torch.equal(state["backbone." + k], sd[k]), k
    moving = [k for k in sd if k.startswith("layer2.") and k.endswith("conv1.weight")]
    assert moving and not all(torch.equal(state["backbone." + k], sd[k]) for k in moving)


def test_qat_iters_sets_every_fine_tuning_phase(tmp_path: Path) -> None:
    from lowbit.studies.demo import CONTROL, DEFAULT, RUNS, DemoSettings, _config, qat_iterations

    s = DemoSettings(qat_iters=7, train_images=100, batch_size=4)
    assert qat_iterations(s) == 7
    assert qat_iterations(DemoSettings(train_images=101, batch_size=4, qat_epochs=2,
                                       qat_iters=None)) == 50  # 2 x (101 // 4)
    for run, spec in RUNS.items():
        cfg = _config(s, tmp_path, run, tmp_path / "fp32", backbone_weights="w.safetensors")
        if spec is None:
            assert "iterations" not in cfg["train"] and cfg["init"] is None
            assert cfg["train"]["channels_last"] is True
        else:
            assert cfg["train"]["iterations"] == 7 and cfg["init"] == str(tmp_path / "fp32")
            assert 1 <= cfg["optim"]["warmup_iters"] <= 7
            assert (cfg["quant"] is None) == (run == CONTROL)
        assert cfg["model"]["kwargs"]["freeze_at"] == DEFAULT.freeze_at
    # from scratch nothing is frozen
    cfg = _config(s, tmp_path, "fp32", None, backbone_weights=None)
    assert "freeze_at" not in cfg["model"]["kwargs"]
    with pytest.raises(ValueError, match="qat_iters"):
        DemoSettings(qat_iters=0)
    with pytest.raises(ValueError, match="freeze_at"):
        DemoSettings(freeze_at=6)
    with pytest.raises(ValueError, match="max_objects"):
        DemoSettings(min_objects=5, max_objects=4)
    with pytest.raises(ValueError, match="attempts"):
        DemoSettings(attempts=0)
    # the scenes reach the devkit's generator arguments
    kw = _config(DemoSettings(min_objects=2, max_objects=3, attempts=4), tmp_path, "fp32",
                 None)["data"]["kwargs"]
    assert (kw["min_objects"], kw["max_objects"], kw["attempts"]) == (2, 3, 4)


def test_cli_fine_tuning_length_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--qat-epochs alone gives whole epochs (the default's 150 iterations no longer apply);
    --qat-iters wins when both are given; the defaults are 150 iterations and 2 FP32 epochs;
    the scene options reach the settings (here the standard scenes)."""
    import lowbit.studies.demo as demo

    seen: list[demo.DemoSettings] = []
    monkeypatch.setattr(demo, "run_demo", lambda out, settings, progress: seen.append(settings)
                        or {"runs": {}, "seconds": 0.0})
    base = ["demo", "--out", str(tmp_path), "--json"]
    assert main(base) == 0
    assert main(base + ["--qat-epochs", "2"]) == 0
    assert main(base + ["--qat-epochs", "2", "--qat-iters", "40"]) == 0
    assert main(base + ["--quick"]) == 0
    assert main(base + ["--min-objects", "1", "--max-objects", "6", "--attempts", "8"]) == 0
    assert (seen[0].qat_iters, seen[0].fp32_epochs) == (150, 2)
    assert (seen[4].min_objects, seen[4].max_objects, seen[4].attempts) == (1, 6, 8)
    assert (seen[0].min_objects, seen[0].max_objects) != (1, 6)
    assert (seen[1].qat_iters, seen[1].qat_epochs) == (None, 2)
    assert seen[2].qat_iters == 40
    assert seen[3].qat_iters is None and demo.qat_iterations(seen[3]) == 75


def test_precision_lists_every_paired_half_width(demo_out: Path) -> None:
    res = json.loads((demo_out / "results.json").read_text())
    p = res["precision"]
    assert p["test_images"] == 4 and p["target_half_width"] == 0.005
    want = {}
    for name, r in res["runs"].items():
        if r.get("drop_half_width") is not None:
            want[f"{name} vs FP32"] = r["drop_half_width"]
        if r.get("drop_vs_control_half_width") is not None:
            want[f"{name} vs control"] = r["drop_vs_control_half_width"]
    assert p["half_widths"] == pytest.approx(want) and len(want) >= 5
    assert p["widest"] == max(want.values()) and p["narrowest"] == min(want.values())
    report = (demo_out / "report.md").read_text()
    assert "Precision: the paired drop intervals" in report


def test_precision_summary_scales_the_test_set_by_the_squared_ratio() -> None:
    from lowbit.studies.demo import format_precision, precision_summary

    runs = {"fp32": {}, "fp32_ft": {"drop_half_width": 0.004},
            "lbw4": {"drop_half_width": 0.010, "drop_vs_control_half_width": 0.012},
            "lbw4_seed1": {"drop_half_width": 0.5, "phase": "lbw4"}}  # a seed row: ignored
    p = precision_summary(runs, 500)
    assert p["half_widths"] == {"fp32_ft vs FP32": 0.004, "lbw4 vs FP32": 0.010,
                                "lbw4 vs control": 0.012}
    # 1.2 points at 500 images -> (1.2 / 0.5)^2 = 5.76 times the images for 0.5
    assert p["test_images_for_target"] == 2880 and p["met"] is False
    assert "2880 test images" in format_precision(p)
    ok = precision_summary({"lbw4": {"drop_half_width": 0.0049}}, 4000)
    assert ok["met"] is True and "within ±0.50" in format_precision(ok)
    assert precision_summary({"fp32": {}}, 10)["widest"] is None
    with pytest.raises(ValueError, match="target"):
        precision_summary(runs, 500, target=0.0)
