"""`lowbit data digits` and `lowbit voc-eval` through lowbit.cli.main."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.data.voc import VOCDetection
from lowbit.eval.voc import evaluate_voc, write_voc_results

from .test_voc_metric import ref_voc_eval_files


@pytest.fixture(scope="module")
def digits_kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lowbit.data.digits import generate_digits

    root = tmp_path_factory.mktemp("kit")
    generate_digits(root, train=4, test=10, size=72, seed=1, workers=1)
    return root


def noisy_predictions(ds: VOCDetection, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    preds = []
    for t in ds.eval_targets():
        b = t["boxes"] + torch.randn(t["boxes"].shape, generator=g) * 2
        fake = torch.rand(2, 2, generator=g) * 50
        b = torch.cat([b, torch.cat([fake, fake + 10], 1)])
        labels = torch.cat([t["labels"], torch.randint(0, 10, (2,), generator=g)])
        preds.append({"boxes": b, "labels": labels,
                      "scores": torch.rand(len(labels), generator=g).round(decimals=1)})
    return preds


def test_data_digits_command(cli_main, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d"
    rc = cli_main(["data", "digits", "--out", str(out), "--train", "3", "--test", "2",
                   "--size", "64", "--seed", "5", "--workers", "1", "--coco", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == {"trainval": 3, "test": 2} and summary["size"] == 64
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 5
    assert (out / "annotations" / "instances_test.json").is_file()
    assert cli_main(["data", "digits", "--out", str(tmp_path / "e"), "--train", "1", "--test",
                     "1", "--size", "64", "--workers", "1"]) == 0
    assert "wrote 1 trainval + 1 test images" in capsys.readouterr().out


def test_voc_eval_json_equals_reference(cli_main, digits_kit: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    ds = VOCDetection(digits_kit, "test")
    preds = noisy_predictions(ds)
    write_voc_results(preds, ds.image_ids, ds.classes, tmp_path, "test")
    for metric in ("07", "area"):
        rc = cli_main(["voc-eval", "--root", str(digits_kit), "--split", "test", "--dets",
                       str(tmp_path), "--metric", metric, "--json", "--exact"])
        assert rc == 0
        out = json.loads(capsys.readouterr().out)
        assert out["metric"] == metric and set(out["AP"]) == set(ds.classes)
        mem = evaluate_voc(preds, ds, metric=metric)
        assert out["mAP"] == pytest.approx(mem.map, abs=1e-12)
        aps = []
        for c in ds.classes:
            rap, npos = ref_voc_eval_files(digits_kit, "test", tmp_path, c, 0.5, metric == "07")
            if npos:
                assert abs(out["AP"][c] - rap) <= 1e-6
                aps.append(rap)
            else:
                assert out["AP"][c] is None and c in out["no_positives"]
        assert abs(out["mAP"] - float(np.mean(aps))) <= 1e-6
        # without --exact the APs are printed rounded to 6 decimals
        assert cli_main(["voc-eval", "--root", str(digits_kit), "--split", "test", "--dets",
                         str(tmp_path), "--metric", metric, "--json"]) == 0
        short = json.loads(capsys.readouterr().out)
        assert short["mAP"] == round(out["mAP"], 6) and short["mAP"] != out["mAP"]
        for c, v in out["AP"].items():
            assert short["AP"][c] == (None if v is None else round(v, 6))
            assert v is None or len(repr(short["AP"][c]).split(".")[-1]) <= 6
    # table output, default metric (VOC07 11-point, as train/eval), subset of classes, --iou
    rc = cli_main(["voc-eval", "--root", str(digits_kit), "--split", "test", "--dets",
                   str(tmp_path), "--classes", "one,two", "--iou", "0.7"])
    text = capsys.readouterr().out
    assert rc == 0 and "mAP" in text and "metric 07" in text and "IoU > 0.7" in text
    assert "three" not in text


def test_voc_eval_errors(cli_main, digits_kit: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture) -> None:
    rc = cli_main(["voc-eval", "--root", str(digits_kit), "--split", "test", "--dets",
                   str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "comp4_det_test_zero.txt" in err
    rc = cli_main(["voc-eval", "--root", str(tmp_path / "nokit"), "--split", "test", "--dets",
                   str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "nokit: not a VOC devkit folder" in err
    rc = cli_main(["voc-eval", "--split", "test", "--dets", str(tmp_path)])
    assert rc == 2 and "--root" in capsys.readouterr().err


def test_voc_eval_devkit_year(cli_main, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--devkit/--year: VOC2007 defaults to the 11-point metric."""
    from lowbit.data.digits import generate_digits

    kit = tmp_path / "VOCdevkit" / "VOC2007"
    generate_digits(kit, train=1, test=3, size=64, seed=2, workers=1)
    ds = VOCDetection(kit, "test")
    preds = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
             for t in ds.eval_targets()]
    write_voc_results(preds, ds.image_ids, ds.classes, tmp_path / "dets", "test")
    rc = cli_main(["voc-eval", "--devkit", str(tmp_path / "VOCdevkit"), "--year", "2007",
                   "--split", "test", "--dets", str(tmp_path / "dets"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["metric"] == "07" and out["mAP"] == pytest.approx(1.0)
    assert all(v is None or math.isclose(v, 1.0) for v in out["AP"].values())
