"""The built-in detection devkit: handwritten digits composited onto real photographs.

Sources (both bundled with scikit-learn, no download): the 1,797 real handwritten 8x8 digits of
``sklearn.datasets.load_digits`` and the two photographs of ``load_sample_images``
(``china.jpg``, ``flower.jpg``). Every scene is a random crop/rescale of a photograph with
colour jitter and distractor clutter (lines, ellipses, rectangles drawn under the digits,
and in 10 % of the scenes one thin line over them), plus 1 to 6 digits upscaled with bicubic
interpolation, slightly rotated, alpha-masked, coloured with a luma contrast of 0.35-0.8
against the local background, 9-45 % of the image high (log-uniform), composited without
overlapping each other (the boxes keep a 2 px gap; a digit that finds no free place in 8 draws
is skipped); 10 % of the placements may be cut by the border, keeping at least 70 % inside.

Honest annotation: an ownership map records which object is visible at each pixel, so a box is
the tight box of the object's *visible* pixels (VOC's rule), ``truncated`` means less than 90 %
of the digit visible (cut by the border or crossed by the line), and ``difficult`` means the
visible box is small (longer side under ``size * 12 / 256`` px) or less than 80 % of the digit
is visible. Objects left with no visible pixel are not annotated.

Version 2 (:data:`GENERATOR_VERSION`, written to ``digits.json``): version 1 drew digits
5-55 % of the image high, overlapped 30 % of the placements on purpose (down to 35 % visible),
drew clutter over the digits in 30 % of the scenes and allowed contrasts down to 0.2; its
labels were often ambiguous (a plain SVM on the ground-truth crops: 44 % accuracy on the
occluded ones, 86 % on the rest) and the detectors stalled at 54-59 % VOC07 mAP
(``docs/data.md``, "What limits mAP on the built-in data").

Train and test draw digits from disjoint pools of the source images (stratified per class),
so the test set measures generalisation to unseen handwriting. Each image has its own random
stream ``default_rng([seed, split, index])``: output is deterministic for a seed and
independent of the number of worker processes.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lowbit.data.voc import write_voc_xml

__all__ = ["DIGIT_CLASSES", "GENERATOR_VERSION", "DigitObject", "DigitsSource", "render_scene",
           "render_crop", "generate_digits", "devkit_version", "is_current_devkit",
           "SCENE_DEFAULTS"]

DIGIT_CLASSES: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip

_SPLIT_CODE = {"trainval": 0, "test": 1}
#: Version of the rendering recipe, written to ``digits.json``; bumped whenever the same
#: arguments would render different images, so that a cached devkit can be recognised as stale
#: (:func:`devkit_version`, :func:`is_current_devkit`). Version 1 (no ``version`` key) allowed
#: deliberate overlaps and clutter over the digits; see ``docs/data.md`` for why version 2
#: does not.
GENERATOR_VERSION = 2
_MIN_INSIDE = 0.7  # a digit cut by the border keeps at least this share of its mask inside
_DIFFICULT_VISIBLE = 0.8  # visible share under which a cut digit is ``difficult``
_TRUNCATED_VISIBLE = 0.9  # visible share under which a digit is ``truncated``
_HEIGHT_RANGE = (0.09, 0.45)  # digit height as a share of the image side (log-uniform)
_CONTRAST_RANGE = (0.35, 0.8)  # luma difference between a digit and its local background
_GAP = 2  # pixels kept free between the boxes of two digits
#: scene arguments of :func:`generate_digits` that are not written to ``digits.json`` at these
#: values (devkits written before they existed had them)
SCENE_DEFAULTS = {"min_objects": 1, "max_objects": 6, "attempts": 8}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class DigitObject:
    """One composited digit. ``box`` is internal 0-based continuous xyxy (visible pixels)."""

    label: int
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool
    visible: float  # visible fraction of the digit's mask
    digit_index: int  # index into sklearn's load_digits


class DigitsSource:
    """The scikit-learn digits and photographs, and the disjoint train/test digit pools."""

    def __init__(self, seed: int = 0, test_fraction: float = 0.3) -> None:
        from sklearn.datasets import load_digits, load_sample_images

        d = load_digits()
        self.glyphs = (d.images / 16.0).astype(np.float32)  # [1797, 8, 8] in [0, 1]
        self.targets = d.target.astype(np.int64)
        self.photos = [Image.fromarray(im) for im in load_sample_images().images]
        rng = np.random.default_rng([seed, 7919])
        test_pool, train_pool = [], []
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(self.targets == c))
            n_test = int(round(test_fraction * len(idx)))
            test_pool.append(idx[:n_test])
            train_pool.append(idx[n_test:])
        self.pools = {
            "trainval": np.sort(np.concatenate(train_pool)),
            "test": np.sort(np.concatenate(test_pool)),
        }


def _background(rng: np.random.Generator, src: DigitsSource, size: int) -> np.ndarray:
    photo = src.photos[int(rng.integers(len(src.photos)))]
    pw, ph = photo.size
    side = rng.uniform(0.2, 1.0) * min(pw, ph)
    x0 = rng.uniform(0, pw - side)
    y0 = rng.uniform(0, ph - side)
    im = photo.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    bg = np.asarray(im, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    if rng.random() < 0.3:
        bg = bg[:, :, rng.permutation(3)]
    if rng.random() < 0.15:
        bg = np.repeat((bg @ _LUMA)[:, :, None], 3, axis=2)
    mean = bg.mean()
    bg = (bg - mean) * rng.uniform(0.5, 1.2) + mean * rng.uniform(0.6, 1.3)
    return np.ascontiguousarray(np.clip(bg, 0.0, 1.0))


def _draw_clutter(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, fill: Any
) -> None:
    kind = rng.integers(3)
    x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
    w, h = rng.uniform(0.03, 0.4, 2) * size
    col = fill if fill is not None else tuple(int(v) for v in rng.integers(0, 256, 3))
    lw = int(rng.integers(1, max(2, size // 64) + 1))
    if kind == 0:
        draw.line([(x0, y0), (x0 + w * rng.choice([-1, 1]), y0 + h)], fill=col, width=lw)
    elif kind == 1:
        draw.ellipse([x0, y0, x0 + w, y0 + h], outline=col, width=lw)
    else:
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col if rng.random() < 0.5 else None,
                       outline=col, width=lw)


def _cluttered_background(rng: np.random.Generator, src: DigitsSource, size: int,
                          mean_clutter: float) -> np.ndarray:
    """A photo background ``float32[size, size, 3]`` in [0, 1] with Poisson(``mean_clutter``)
    random lines, ellipses and rectangles drawn on it."""
    img = _background(rng, src, size)
    under = Image.fromarray((img * 255).astype(np.uint8))
    draw = ImageDraw.Draw(under)
    for _ in range(int(rng.poisson(mean_clutter))):
        _draw_clutter(rng, draw, size, None)
    return np.asarray(under, dtype=np.float32) / 255.0


def _glyph_alpha(rng: np.random.Generator, glyph: np.ndarray, height: float) -> np.ndarray:
    """Upscaled, slightly rotated alpha mask ``float32[h, w]`` in [0, 1] of an 8x8 digit."""
    g = np.pad(glyph, 1)  # a zero border so the bicubic edge fades out
    h = max(6, int(round(height * 10 / 8)))
    w = max(5, int(round(h * rng.uniform(0.75, 1.15))))
    im = Image.fromarray(g, mode="F").resize((w, h), Image.BICUBIC)
    angle = rng.uniform(-15, 15)
    if abs(angle) > 2:
        im = im.rotate(angle, resample=Image.BILINEAR, expand=True)
    v = np.asarray(im, dtype=np.float32)
    thr = rng.uniform(0.4, 0.55)
    return np.clip((v - thr) / 0.15 + 0.5, 0.0, 1.0)


def _colour(rng: np.random.Generator, bg_luma: float) -> np.ndarray:
    """A random colour whose luma differs from ``bg_luma`` by a random contrast drawn from
    ``_CONTRAST_RANGE`` (clipped at black / white)."""
    c = rng.uniform(0, 1, 3).astype(np.float32)
    contrast = rng.uniform(*_CONTRAST_RANGE)
    lum = float(c @ _LUMA)
    target = 1.0 if bg_luma < 0.5 else 0.0
    goal = bg_luma + contrast if target == 1.0 else bg_luma - contrast
    goal = min(max(goal, 0.0), 1.0)
    if abs(lum - bg_luma) < contrast and lum != target:
        a = min(1.0, max(0.0, (goal - lum) / (target - lum)))
        c = c + a * (target - c)
    return c


def render_scene(
    rng: np.random.Generator,
    src: DigitsSource,
    pool: np.ndarray,
    size: int,
    max_objects: int = 6,
    min_objects: int = 1,
    attempts: int = 8,
) -> tuple[np.ndarray, list[DigitObject]]:
    """Render one ``size x size`` scene: ``uint8[H, W, 3]`` image and its digit objects.

    Draws ``n`` uniform in ``min_objects..max_objects`` digits and places each at up to
    ``attempts`` random positions where its box keeps ``_GAP`` pixels from every placed box
    (a digit that finds none is dropped, so a scene may hold fewer than ``n``)."""
    img = _cluttered_background(rng, src, size, 3.0)
    owner = np.full((size, size), -1, dtype=np.int32)
    totals: list[int] = []  # mask pixels of each digit, including any outside the image
    visible: list[int] = []
    regions: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    sources: list[int] = []
    n = int(rng.integers(min_objects, max_objects + 1))
    lo, hi = math.log(_HEIGHT_RANGE[0] * size), math.log(_HEIGHT_RANGE[1] * size)
    for _ in range(n):
        di = int(rng.choice(pool))
        alpha = _glyph_alpha(rng, src.glyphs[di], math.exp(rng.uniform(lo, hi)))
        mask = alpha > 0.5
        total = int(mask.sum())
        if total == 0:
            continue
        gh, gw = alpha.shape
        placed = None
        for _attempt in range(attempts):
            if rng.random() < 0.1:  # may be cut by the border
                x0 = int(rng.integers(-gw // 3, size - 2 * gw // 3 + 1))
                y0 = int(rng.integers(-gh // 3, size - 2 * gh // 3 + 1))
            else:
                x0 = int(rng.integers(0, max(1, size - gw + 1)))
                y0 = int(rng.integers(0, max(1, size - gh + 1)))
            ix0, iy0 = max(x0, 0), max(y0, 0)
            ix1, iy1 = min(x0 + gw, size), min(y0 + gh, size)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            # no digit overlaps another (version 1's deliberate overlaps left labels ambiguous)
            if not all(ix0 >= rx1 + _GAP or ix1 + _GAP <= rx0 or iy0 >= ry1 + _GAP
                       or iy1 + _GAP <= ry0 for rx0, ry0, rx1, ry1 in regions):
                continue
            # a glyph wholly inside keeps its whole mask: only a cut one needs counting
            cut = (ix0, iy0, ix1, iy1) != (x0, y0, x0 + gw, y0 + gh)
            if cut and mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0].sum() < _MIN_INSIDE * total:
                continue
            placed = (x0, y0, ix0, iy0, ix1, iy1)
            break
        if placed is None:
            continue
        x0, y0, ix0, iy0, ix1, iy1 = placed
        a = alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, None]
        m = a[..., 0] > 0.5
        region = img[iy0:iy1, ix0:ix1]
        col = _colour(rng, float((region[m] @ _LUMA).mean()))
        shade = rng.uniform(0.8, 1.0) + rng.uniform(0.0, 0.2) * a  # a little stroke shading
        region[...] = region * (1.0 - a) + np.clip(col * shade, 0, 1) * a
        k = len(visible)
        sub = owner[iy0:iy1, ix0:ix1]
        hidden = np.bincount(sub[m] + 1, minlength=k + 1)[1:]
        for j in range(k):
            visible[j] -= int(hidden[j])
        sub[m] = k
        totals.append(total)
        visible.append(int(m.sum()))
        regions.append((ix0, iy0, ix1, iy1))
        labels.append(int(src.targets[di]))
        sources.append(di)
    if regions and rng.random() < 0.1:  # a thin line drawn over the digits occludes a little
        over = Image.new("L", (size, size), 0)
        odraw = ImageDraw.Draw(over)
        x0, y0 = rng.uniform(0.0, 1.0, 2) * size
        dx, dy = rng.uniform(-0.4, 0.4, 2) * size
        odraw.line([(x0, y0), (x0 + dx, y0 + dy)], fill=255, width=max(1, size // 128))
        om = np.asarray(over) > 127
        col = rng.uniform(0, 1, 3).astype(np.float32)
        img[om] = col
        owner[om] = -1
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), img.shape).astype(np.float32)
    out = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    small = size * 12.0 / 256.0
    objects: list[DigitObject] = []
    for k, (rx0, ry0, rx1, ry1) in enumerate(regions):
        ys, xs = np.nonzero(owner[ry0:ry1, rx0:rx1] == k)
        if len(xs) == 0:
            continue  # invisible: not annotated
        box = (rx0 + int(xs.min()), ry0 + int(ys.min()), rx0 + int(xs.max()) + 1,
               ry0 + int(ys.max()) + 1)
        vis = len(xs) / totals[k]  # pixels cut by the border count as hidden
        longer = max(box[2] - box[0], box[3] - box[1])
        objects.append(
            DigitObject(
                label=labels[k],
                box=box,
                difficult=bool(longer < small or vis < _DIFFICULT_VISIBLE),
                truncated=bool(vis < _TRUNCATED_VISIBLE),
                visible=float(vis),
                digit_index=sources[k],
            )
        )
    return out, objects


def render_crop(
    rng: np.random.Generator,
    src: DigitsSource,
    pool: np.ndarray,
    size: int,
    label: int | None,
) -> np.ndarray:
    """One ``size x size`` classification crop, ``uint8[H, W, 3]``: a photo background with
    clutter and, unless ``label`` is None (a background crop), one digit of class ``label``
    drawn from ``pool`` (indices into the scikit-learn digits), 35-90% of the crop high, at a
    random position that keeps at least 80% of it inside, with the scenes' colours, rotation,
    stroke shading and noise. Used by :mod:`lowbit.pretrain` to pretrain backbones offline.
    """
    img = _cluttered_background(rng, src, size, 1.5)
    if label is not None:
        cands = pool[src.targets[pool] == label]
        if len(cands) == 0:
            raise ValueError(f"no digit of class {label} in the pool")
        di = int(rng.choice(cands))
        alpha = _glyph_alpha(rng, src.glyphs[di], rng.uniform(0.35, 0.9) * size * 0.8)
        gh, gw = alpha.shape
        x0 = int(round(rng.uniform(-0.1 * gw, size - 0.9 * gw)))
        y0 = int(round(rng.uniform(-0.1 * gh, size - 0.9 * gh)))
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + gw, size), min(y0 + gh, size)
        if ix1 > ix0 and iy1 > iy0:
            a = alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, None]
            m = a[..., 0] > 0.5
            region = img[iy0:iy1, ix0:ix1]
            luma = float((region[m] @ _LUMA).mean()) if m.any() else float(region.mean())
            col = _colour(rng, luma)
            shade = rng.uniform(0.8, 1.0) + rng.uniform(0.0, 0.2) * a
            region[...] = region * (1.0 - a) + np.clip(col * shade, 0, 1) * a
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _render_range(
    args: tuple[str, int, int, int, int, int, str, int, float, tuple[int, int, int]],
) -> list[dict[str, Any]]:
    out_dir, seed, split_code, start, stop, size, split, quality, test_fraction, scene = args
    src = _worker_source(seed, test_fraction)
    pool = src.pools[split]
    root = Path(out_dir)
    records = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, split_code, i])
        image, objects = render_scene(rng, src, pool, size, min_objects=scene[0],
                                      max_objects=scene[1], attempts=scene[2])
        image_id = f"{i:06d}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=quality)
        write_voc_xml(
            root / "Annotations" / f"{image_id}.xml",
            f"{image_id}.jpg",
            size,
            size,
            [DIGIT_CLASSES[o.label] for o in objects],
            np.array([o.box for o in objects], dtype=np.float64).reshape(-1, 4),
            difficult=[o.difficult for o in objects],
            truncated=[o.truncated for o in objects],
            extra=[{"digit_index": str(o.digit_index)} for o in objects],
            folder="digits",
        )
        records.append({"id": image_id, "n": len(objects),
                        "difficult": sum(o.difficult for o in objects)})
    return records


_SOURCE_CACHE: dict[tuple[int, float], DigitsSource] = {}


def _worker_source(seed: int, test_fraction: float) -> DigitsSource:
    key = (seed, test_fraction)
    if key not in _SOURCE_CACHE:
        _SOURCE_CACHE[key] = DigitsSource(seed, test_fraction)
    return _SOURCE_CACHE[key]


def generate_digits(
    out: str | Path,
    train: int = 2000,
    test: int = 500,
    size: int = 256,
    seed: int = 0,
    coco: bool = False,
    workers: int | None = None,
    quality: int = 90,
    test_fraction: float = 0.3,
    progress: bool = False,
    min_objects: int = 1,
    max_objects: int = 6,
    attempts: int = 8,
) -> dict[str, Any]:
    """Write the digits devkit to ``out`` (VOC layout) and return a summary dict.

    Layout: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` (VOC 1-based inclusive boxes,
    ``difficult``/``truncated`` flags, and a ``digit_index`` tag naming the source digit),
    ``ImageSets/Main/{trainval,test}.txt``, ``classes.txt``, ``digits.json`` (parameters and
    the two digit pools); with ``coco`` also ``annotations/instances_{trainval,test}.json``.
    Ids ``000000..`` are train images first, then test. ``workers`` processes (default: CPUs,
    at most 4) render in parallel; the output does not depend on it. Each scene draws
    ``min_objects..max_objects`` digits and tries ``attempts`` positions for each (see
    :func:`render_scene`); the defaults 1, 6, 8 give the standard scenes (about 2.8 objects per
    image), ``6, 16, 30`` dense ones (about 6.6; ``docs/data.md``). Non-default values are
    recorded in ``digits.json``.
    """
    if train < 0 or test < 0 or train + test == 0:
        raise ValueError(f"digits: need train, test >= 0 and some images, got {train}, {test}")
    if size < 32:
        raise ValueError(f"digits: --size must be at least 32 px, got {size}")
    if not 1 <= min_objects <= max_objects or attempts < 1:
        raise ValueError(f"digits: need 1 <= min_objects <= max_objects and attempts >= 1, got "
                         f"min_objects={min_objects}, max_objects={max_objects}, "
                         f"attempts={attempts}")
    root = Path(out)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    splits = {"trainval": range(0, train), "test": range(train, train + test)}
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    jobs = []
    chunk = 50
    for split, ids in splits.items():
        for s in range(ids.start, ids.stop, chunk):
            jobs.append((str(root), seed, _SPLIT_CODE[split], s, min(s + chunk, ids.stop), size,
                         split, quality, test_fraction, (min_objects, max_objects, attempts)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=train + test, desc="digits", unit="img", disable=None)
    records: list[dict[str, Any]] = []
    if workers <= 1 or len(jobs) == 1:
        results = map(_render_range, jobs)
        for r in results:
            records.extend(r)
            if bar is not None:
                bar.update(len(r))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            for r in ex.map(_render_range, jobs):
                records.extend(r)
                if bar is not None:
                    bar.update(len(r))
    if bar is not None:
        bar.close()
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"{i:06d}\n" for i in ids)
        )
    (root / "classes.txt").write_text("".join(c + "\n" for c in DIGIT_CLASSES))
    src = _worker_source(seed, test_fraction)
    meta = {
        "generator": "lowbit.data.digits", "version": GENERATOR_VERSION,
        "train": train, "test": test, "size": size, "seed": seed, "quality": quality,
        "test_fraction": test_fraction,
        "classes": list(DIGIT_CLASSES),
        "digit_pools": {k: v.tolist() for k, v in src.pools.items()},
    }  # fmt: skip
    scene = {"min_objects": min_objects, "max_objects": max_objects, "attempts": attempts}
    meta.update({k: v for k, v in scene.items() if v != SCENE_DEFAULTS[k]})
    (root / "digits.json").write_text(json.dumps(meta))
    n_obj = sum(r["n"] for r in records)
    summary: dict[str, Any] = {
        "out": str(root),
        "images": {"trainval": train, "test": test},
        "objects": n_obj,
        "difficult": sum(r["difficult"] for r in records),
        "size": size,
        "seed": seed,
    }
    if coco:
        from lowbit.data.coco import voc_to_coco

        ann_dir = root / "annotations"
        ann_dir.mkdir(exist_ok=True)
        summary["coco"] = []
        for split in splits:
            path = ann_dir / f"instances_{split}.json"
            voc_to_coco(root, split, path, classes=DIGIT_CLASSES)
            summary["coco"].append(str(path))
    return summary


def devkit_version(root: str | Path) -> int | None:
    """The generator version recorded in ``root/digits.json``: 1 for a devkit written before
    versions were recorded, None when there is no readable ``digits.json`` of this generator."""
    try:
        meta = json.loads((Path(root) / "digits.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != "lowbit.data.digits":
        return None
    v = meta.get("version", 1)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def is_current_devkit(root: str | Path, train: int | None = None, test: int | None = None,
                      size: int | None = None, seed: int | None = None,
                      min_objects: int | None = None, max_objects: int | None = None,
                      attempts: int | None = None) -> bool:
    """True when ``root`` holds a complete devkit of this :data:`GENERATOR_VERSION` (both image
    sets and ``digits.json``) made with the given arguments (None: not checked; a scene
    argument missing from ``digits.json`` had its default). A caller that caches devkits
    regenerates when this is False."""
    root = Path(root)
    if not all((root / "ImageSets" / "Main" / f"{s}.txt").is_file() for s in _SPLIT_CODE):
        return False
    if devkit_version(root) != GENERATOR_VERSION:
        return False
    meta = json.loads((root / "digits.json").read_text())
    want = {"train": train, "test": test, "size": size, "seed": seed}
    scene = {"min_objects": min_objects, "max_objects": max_objects, "attempts": attempts}
    return (all(v is None or meta.get(k) == v for k, v in want.items())
            and all(v is None or meta.get(k, SCENE_DEFAULTS[k]) == v for k, v in scene.items()))
