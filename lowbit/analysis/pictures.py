"""Detection pictures (the paper's Fig. 3.1): the same images, one column per model, boxes with
class name and score above a display threshold (0.5 as in the paper)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["draw_detections", "side_by_side"]

_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190),
]


def _to_pil(image: Tensor | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be Tensor[3, H, W], got shape {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB")


def draw_detections(
    image: Tensor | Image.Image,
    det: Mapping[str, Tensor],
    classes: Sequence[str],
    threshold: float = 0.5,
    scale: int = 2,
) -> Image.Image:
    """Draw ``det`` (``boxes`` Tensor[K,4] 0-based xyxy pixels, ``labels`` 0-based, ``scores``)
    with score >= ``threshold`` on ``image`` (Tensor[3,H,W] in [0,1]); upscaled ``scale``x."""
    im = _to_pil(image)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    keep = det["scores"] >= threshold
    for box, lab, sc in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep]):
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        color = _PALETTE[int(lab) % len(_PALETTE)]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        name = classes[int(lab)] if 0 <= int(lab) < len(classes) else str(int(lab))
        text = f"{name} {float(sc):.2f}"
        tw = draw.textlength(text, font=font)
        ty = max(0.0, y1 - 12)
        draw.rectangle([x1, ty, x1 + tw + 4, ty + 12], fill=color)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0), font=font)
    return im


def side_by_side(
    images: Sequence[Tensor],
    detections: Mapping[str, Sequence[Mapping[str, Tensor]]],
    classes: Sequence[str],
    path: str | os.PathLike[str],
    threshold: float = 0.5,
    scale: int = 2,
    gap: int = 6,
) -> tuple[int, int]:
    """Grid PNG: one row per image, one column per model (``detections``' order, titled).

    Returns the picture's ``(width, height)``.
    """
    names = list(detections)
    if not images or not names:
        raise ValueError("side_by_side needs at least one image and one model")
    for n in names:
        if len(detections[n]) != len(images):
            k = len(detections[n])
            raise ValueError(f"model {n!r} has {k} results for {len(images)} images")
    tiles = [[draw_detections(im, detections[n][i], classes, threshold, scale)
              for n in names] for i, im in enumerate(images)]
    cw = max(t.width for row in tiles for t in row)
    rh = [max(t.height for t in row) for row in tiles]
    title_h = 16
    W = len(names) * cw + (len(names) - 1) * gap
    H = title_h + sum(rh) + (len(images) - 1) * gap
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, n in enumerate(names):
        draw.text((j * (cw + gap) + 4, 2), n, fill=(0, 0, 0), font=ImageFont.load_default())
    y = title_h
    for i, row in enumerate(tiles):
        for j, t in enumerate(row):
            canvas.paste(t, (j * (cw + gap), y))
        y += rh[i] + gap
    canvas.save(path, format="PNG")
    return W, H


def save_histogram(w: torch.Tensor, title: str, path: Path) -> dict[str, float]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowbit.analysis.stats import weight_stats

    st = weight_stats(w)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(w.reshape(-1).numpy(), bins=120, color="#3a6ea5")
    ax.set_title(f"{title}\nKurtosis = {st.excess_kurtosis:.3f}, Skewness = {st.skewness:.3f}, "
                 f"p = {st.normality_p:.2e}", fontsize=8)
    ax.set_xlabel("weight")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return asdict(st)
