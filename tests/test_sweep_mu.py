"""`lowbit sweep-mu` on a tiny setting: one row per mu, the table and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from lowbit.cli import main
from tests._tiny import tiny_fp32_run


def test_sweep_mu_has_a_row_per_mu(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                   capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_fp32_run(tmp_path_factory)
    out = tmp_path / "sweep"
    rc = main(["sweep-mu", str(cfg), "--bits", "6", "--mu", "0.5,1.0", "--qat-iters", "1",
               "--out", str(out), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    rows = [r for r in res["rows"] if r["method"] != "fp32"]
    assert [r["mu_ratio"] for r in rows] == [0.5, 1.0]
    fp = next(r for r in res["rows"] if r["method"] == "fp32")
    for r in rows:
        assert r["status"] == "ok", r.get("error")
        assert r["bits"] == 6 and 0.0 <= r["mAP"] <= 1.0
        assert r["drop"] == pytest.approx(fp["mAP"] - r["mAP"])
        assert math.isfinite(r["zero_share"])
        # each mu is its own QAT run of lbw-approx with that ratio
        run_cfg = (Path(r["run_dir"]) / "config.yaml").read_text()
        assert "lbw-approx" in run_cfg and f"mu_ratio: {r['mu_ratio']}" in run_cfg
        # intervals: mAP [lo, hi] and the paired drop [lo, hi] vs FP32, half-widths
        lo, hi = r["mAP_ci"]
        assert 0.0 <= lo <= hi <= 1.0
        dlo, dhi = r["drop_ci"]
        assert dlo <= dhi and r["drop_half_width"] == pytest.approx((dhi - dlo) / 2)
        assert r["drop_excludes_zero"] == (dlo > 0 or dhi < 0)
        assert len(list(Path(r["dets_dir"]).glob("comp4_det_test_*.txt"))) == 10
    assert res["run_info"]["threads"] >= 1
    assert len({r["run_dir"] for r in rows}) == 2
    md = (out / "sweep_mu.md").read_text()
    assert sum(1 for line in md.splitlines() if line.startswith("| ")) == 1 + len(rows)
    with Image.open(out / "map_vs_mu.png") as im:
        assert im.format == "PNG" and im.size == (550, 380)
    assert "mAP [95% CI]" in md and "paired" in md
    assert main(["sweep-mu", str(cfg), "--mu", "0.5,x", "--out", str(out)]) == 2
    capsys.readouterr()
    assert main(["sweep-mu", str(cfg), "--bits", "99", "--out", str(out)]) == 2
    assert "--bits 99" in capsys.readouterr().err
