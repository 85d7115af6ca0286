"""Detection transforms keep boxes consistent with the image; collate pads."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    batch_images,
    collate_detection,
    hflip_boxes,
    rescale_boxes,
)


def box_image(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """A black image with a white rectangle covering the continuous box."""
    im = torch.zeros(3, h, w)
    x1, y1, x2, y2 = box
    im[:, y1:y2, x1:x2] = 1.0
    return im


def bright_box(im: torch.Tensor, thr: float = 0.5) -> list[int]:
    ys, xs = torch.nonzero(im[0] > thr, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


boxes_st = st.lists(
    st.tuples(*[st.floats(0, 100, allow_nan=False, width=32)] * 4), min_size=0, max_size=6
).map(lambda bs: torch.tensor([[min(a, c), min(b, d), max(a, c), max(b, d)] for a, b, c, d in bs],
                              dtype=torch.float32).reshape(-1, 4))


@settings(max_examples=60, deadline=None)
@given(boxes=boxes_st, width=st.integers(100, 300))
def test_flip_twice_is_identity(boxes: torch.Tensor, width: int) -> None:
    flip = RandomHorizontalFlip(p=1.0)
    image = torch.rand(3, 5, width)
    im1, t1 = flip(image, {"boxes": boxes})
    im2, t2 = flip(im1, t1)
    torch.testing.assert_close(im2, image, rtol=0, atol=0)
    torch.testing.assert_close(t2["boxes"], boxes, rtol=0, atol=1e-4)
    assert (t1["boxes"][:, 2] >= t1["boxes"][:, 0]).all()
    assert (t1["boxes"][:, :4:2] >= 0).all() and (t1["boxes"][:, :4:2] <= width).all()


def test_flip_moves_box_with_the_pixels() -> None:
    box = (3, 4, 11, 9)
    im, t = RandomHorizontalFlip(p=1.0)(box_image(16, 20, box), {"boxes": torch.tensor([box])})
    assert t["boxes"][0].tolist() == bright_box(im) == [9, 4, 17, 9]
    torch.testing.assert_close(hflip_boxes(torch.tensor([[0.0, 0, 20, 1]]), 20),
                               torch.tensor([[0.0, 0, 20, 1]]))


def test_flip_probability_and_generator() -> None:
    image, t = torch.rand(3, 4, 6), {"boxes": torch.tensor([[0.0, 0, 1, 1]])}
    im0, t0 = RandomHorizontalFlip(p=0.0)(image, t)
    assert im0 is image and t0 is t
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    f1, f2 = RandomHorizontalFlip(0.5, g1), RandomHorizontalFlip(0.5, g2)
    seq1 = [f1(image, t)[1]["boxes"][0, 0].item() for _ in range(20)]
    seq2 = [f2(image, t)[1]["boxes"][0, 0].item() for _ in range(20)]
    assert seq1 == seq2 and set(seq1) == {0.0, 5.0}


@pytest.mark.parametrize(("h", "w", "min_size", "max_size"),
                         [(48, 64, 24, None), (64, 48, 96, None), (30, 100, 60, 120),
                          (37, 53, 20, None)])
def test_resize_scales_boxes_like_the_image(h: int, w: int, min_size: int, max_size) -> None:
    r = Resize(min_size, max_size)
    boxes = torch.tensor([[0.0, 0.0, w, h], [3.0, 5.0, 17.0, 21.0]])
    im, t = r(torch.rand(3, h, w), {"boxes": boxes, "size": (h, w)})
    nh, nw = im.shape[-2:]
    assert t["size"] == (nh, nw)
    assert min(nh, nw) == min_size or max(nh, nw) == max_size
    if max_size is not None:
        assert max(nh, nw) <= max_size
    assert abs(nw / nh - w / h) <= 1.0 / min(nh, nw) * (w / h) + 1e-6  # aspect kept
    scale = torch.tensor([nw / w, nh / h, nw / w, nh / h])
    torch.testing.assert_close(t["boxes"], boxes * scale)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([0.0, 0.0, nw, nh]))  # full image
    torch.testing.assert_close(rescale_boxes(t["boxes"], (nh, nw), (h, w)), boxes)


def test_resize_moves_box_with_the_pixels() -> None:
    box = (8, 4, 24, 20)
    im, t = Resize(64)(box_image(32, 48, box), {"boxes": torch.tensor([box], dtype=torch.float32)})
    assert im.shape[-2:] == (64, 96)
    assert t["boxes"][0].tolist() == bright_box(im) == [16, 8, 48, 40]


def test_resize_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        Resize(0)
    with pytest.raises(ValueError):
        Resize(100, 50)


def test_normalize_and_compose() -> None:
    image = torch.full((3, 2, 2), 0.5)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    t = Compose([RandomHorizontalFlip(1.0), Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))])
    im, tgt = t(image, {"boxes": boxes})
    torch.testing.assert_close(im[:, 0, 0], torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(tgt["boxes"], boxes)  # full-width box is flip-invariant


def test_batch_and_collate_pad_bottom_right() -> None:
    a, b = torch.rand(3, 10, 7), torch.rand(3, 5, 12)
    batch, sizes = batch_images([a, b], size_divisible=8)
    assert batch.shape == (2, 3, 16, 16) and sizes == [(10, 7), (5, 12)]
    torch.testing.assert_close(batch[0, :, :10, :7], a)
    torch.testing.assert_close(batch[1, :, :5, :12], b)
    assert batch[0, :, 10:].abs().sum() == 0 and batch[0, :, :, 7:].abs().sum() == 0
    ta = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([1])}
    tb = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    collate = functools.partial(collate_detection, size_divisible=4)
    images, targets = collate([(a, ta), (b, tb)])
    assert images.shape == (2, 3, 12, 12)
    assert [t["size"] for t in targets] == [(10, 7), (5, 12)]
    assert targets[0]["boxes"] is ta["boxes"] and "size" not in ta  # boxes unchanged, no mutation
    images, targets = collate_detection([(a, ta), (b, tb)], pad=False)
    assert isinstance(images, list) and images[1] is b
    with pytest.raises(ValueError):
        batch_images([])


def test_dataloader_with_collate(tmp_path) -> None:
    from torch.utils.data import DataLoader

    data = [(torch.rand(3, 8 + i, 9), {"boxes": torch.zeros(i, 4)}) for i in range(5)]
    loader = DataLoader(data, batch_size=2, collate_fn=collate_detection)
    shapes = [tuple(x.shape) for x, _ in loader]
    assert shapes == [(2, 3, 9, 9), (2, 3, 11, 9), (1, 3, 12, 9)]
