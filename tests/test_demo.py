"""`lowbit demo` end to end on a tiny setting: every run, the report, stats, the picture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from lowbit.cli import main
from lowbit.quant import lbw_exact
from lowbit.train.checkpoint import load_checkpoint, resolve_checkpoint


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--quick", "--out", str(out), "--train-images", "8", "--test-images", "4",
               "--size", "64", "--epochs", "1", "--qat-epochs", "1", "--width", "0.125",
               "--batch-size", "4", "--json"])
    assert rc == 0
    return out


def test_results_json_has_every_run(demo_out: Path) -> None:
    res = json.loads((demo_out / "results.json").read_text())
    assert set(res["runs"]) == {"fp32", "lbw4", "lbw5", "lbw6", "lbw6_mu"}
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
