"""`lowbit voc-eval` end to end: no torch on the path, the annotation cache (where it lives,
when it is used, invalidated, ignored), same APs with and without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbit.data.voc import annotation_cache_path, load_voc_annotations, parse_voc_xml
from lowbit.eval.voc import load_voc_ground_truth, voc_eval_files

CLASSES = ("cat", "dog")


def tiny_kit(root: Path, n: int = 6, seed: int = 0) -> Path:
    """A hand-written devkit (no lowbit writer, no torch): ``n`` images, results files."""
    rng = np.random.default_rng(seed)
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "dets").mkdir()
    dets: dict[str, list[str]] = {c: [] for c in CLASSES}
    for i in range(n):
        objs = []
        for _ in range(int(rng.integers(1, 4))):
            c = CLASSES[int(rng.integers(0, 2))]
            x1, y1 = (int(v) for v in rng.integers(1, 40, 2))
            x2, y2 = x1 + int(rng.integers(5, 20)), y1 + int(rng.integers(5, 20))
            objs.append(f"<object><name>{c}</name><difficult>{int(rng.random() < 0.2)}"
                        f"</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}"
                        f"</xmax><ymax>{y2}</ymax></bndbox></object>")
            j = rng.normal(0, 2, 4)
            dets[c].append(f"im{i} {rng.random():.4f} {x1 + j[0]:.2f} {y1 + j[1]:.2f} "
                           f"{x2 + j[2]:.2f} {y2 + j[3]:.2f}")
        (root / "Annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.jpg</filename><size><width>80</width>"
            f"<height>80</height><depth>3</depth></size>{''.join(objs)}</annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"im{i}\n" for i in range(n)))
    for c in CLASSES:
        (root / "dets" / f"comp4_det_test_{c}.txt").write_text("\n".join(dets[c]) + "\n")
    return root


def test_voc_eval_process_imports_no_torch(tmp_path: Path) -> None:
    """The real entry point, run in a fresh interpreter: after voc-eval, neither torch nor
    scipy (nor another verb's module) is loaded."""
    kit = tiny_kit(tmp_path / "kit")
    code = (
        "import json, sys\n"
        "from lowbit.cli import main\n"
        f"rc = main(['voc-eval', '--root', {str(kit)!r}, '--split', 'test', '--dets', "
        f"{str(kit / 'dets')!r}, '--classes', 'cat,dog', '--json', '--cache-dir', "
        f"{str(tmp_path / 'cache')!r}])\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'scipy') "
        "or m.startswith('lowbit.commands.') and m != 'lowbit.commands.voc_eval')\n"
        "print(json.dumps({'rc': rc, 'mods': mods}), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[2], timeout=120)
    info = json.loads(r.stderr.strip().splitlines()[-1])
    assert info == {"rc": 0, "mods": []}, r.stderr
    out = json.loads(r.stdout)
    assert set(out["AP"]) == set(CLASSES) and out["metric"] == "07"


def test_cache_is_used_invalidated_and_optional(tmp_path: Path) -> None:
    kit = tiny_kit(tmp_path / "kit")
    cache = tmp_path / "cache"
    ids = [f"im{i}" for i in range(6)]
    fresh = [parse_voc_xml(kit / "Annotations" / f"{i}.xml") for i in ids]
    assert load_voc_annotations(kit, ids, cache_dir=cache) == fresh  # writes the cache
    cpath = annotation_cache_path(kit, cache)
    assert cpath.parent == cache and cpath.is_file()
    assert load_voc_annotations(kit, ids, cache_dir=cache) == fresh  # read back: equal

    # the cache is really read: an entry edited behind the file's back (same size and mtime)
    data = json.loads(cpath.read_text())
    data["entries"]["im0"][5][0][1] = 2.0  # xmin of the first object
    cpath.write_text(json.dumps(data))
    assert load_voc_annotations(kit, ids, cache_dir=cache)[0].objects[0].bbox[0] == 2.0
    assert load_voc_annotations(kit, ids, cache=False)[0] == fresh[0]
    # ... and invalidated by the file's mtime
    xml = kit / "Annotations" / "im0.xml"
    st = xml.stat()
    os.utime(xml, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_voc_annotations(kit, ids, cache_dir=cache) == fresh
    # ... and by its size (an edit keeping the mtime)
    st = xml.stat()
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>"
                                           ).replace("</annotation>", " </annotation>"))
    os.utime(xml, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load_voc_annotations(kit, ids, cache_dir=cache)
    assert again[0] == parse_voc_xml(xml) and again[1:] == fresh[1:]


def test_corrupt_or_unwritable_cache_is_harmless(tmp_path: Path) -> None:
    kit = tiny_kit(tmp_path / "kit")
    dets = kit / "dets"
    ref = voc_eval_files(kit, "test", dets, CLASSES, "07", cache=False)
    # a cache "folder" that is a file: nothing can be written, results unchanged
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    assert voc_eval_files(kit, "test", dets, CLASSES, "07", cache_dir=blocker).ap == ref.ap
    assert blocker.read_text() == "x"
    cache = tmp_path / "cache"
    voc_eval_files(kit, "test", dets, CLASSES, "07", cache_dir=cache)
    cpath = annotation_cache_path(kit, cache)
    for junk in ("{", '{"format": "lowbit-voc-annotations-0", "entries": {}}', "[]",
                 json.dumps({**json.loads(cpath.read_text()), "entries": {"im0": [1, 2]}})):
        cpath.write_text(junk)
        assert voc_eval_files(kit, "test", dets, CLASSES, "07", cache_dir=cache).ap == ref.ap
    # a well-shaped entry with garbage inside (same key as the file): parsed again
    data = json.loads(cpath.read_text())
    data["entries"]["im0"][5] = [["cat", "x", 1, 2, 3, False, False, {}]]
    cpath.write_text(json.dumps(data))
    assert voc_eval_files(kit, "test", dets, CLASSES, "07", cache_dir=cache).ap == ref.ap


def test_cached_ground_truth_is_bit_identical(tmp_path: Path) -> None:
    kit = tiny_kit(tmp_path / "kit", n=30, seed=3)
    a = load_voc_ground_truth(kit, "test", CLASSES, cache=False)
    load_voc_ground_truth(kit, "test", CLASSES, cache_dir=tmp_path / "c")  # write
    b = load_voc_ground_truth(kit, "test", CLASSES, cache_dir=tmp_path / "c")  # read
    for f in ("boxes", "labels", "difficult", "image"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), f
    # and equal to a loop over the XML files written by hand above
    boxes = []
    for i in range(30):
        for o in parse_voc_xml(kit / "Annotations" / f"im{i}.xml").objects:
            boxes.append(o.bbox)
    assert a.boxes.tolist() == [list(b) for b in boxes]


def test_default_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "env"))
    assert annotation_cache_path(tmp_path).parent == tmp_path / "env"
    monkeypatch.delenv("LOWBIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert annotation_cache_path(tmp_path).parent == tmp_path / "xdg" / "lowbit"
    # one file per devkit folder, whatever the spelling of its path
    assert annotation_cache_path(tmp_path / "a" / "..") == annotation_cache_path(tmp_path)
    assert annotation_cache_path(tmp_path / "a") != annotation_cache_path(tmp_path)


def test_voc_eval_help_covers_every_option(capsys: pytest.CaptureFixture) -> None:
    from lowbit.cli import build_parser

    parser = build_parser(["lowbit.commands.voc_eval"])
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    p = sub.choices["voc-eval"]
    for action in p._actions:
        assert action.help, f"voc-eval {action.option_strings} has no help"
    assert p.get_default("metric") == "07"


def test_coco_results_file_errors_name_the_file(tmp_path: Path) -> None:
    from lowbit.eval.coco import evaluate_coco_files

    ann = tmp_path / "ann.json"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    res = tmp_path / "res.json"
    for data, msg in ((b"[" * 100000, "nested too deeply"), (b"[\xff]", "not UTF-8"),
                      (b"[1,", "malformed JSON"), (b"{}", "is a JSON list")):
        res.write_bytes(data)
        with pytest.raises(ValueError, match=rf"res\.json: .*{msg}"):
            evaluate_coco_files(ann, res)
