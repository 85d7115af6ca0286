"""Matcher and BalancedPositiveNegativeSampler: hand cases and properties."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.detection.ops import BalancedPositiveNegativeSampler, Matcher


def test_matcher_thresholds_by_hand() -> None:
    q = torch.tensor(
        [
            [0.9, 0.2, 0.5, 0.0, 0.69],
            [0.1, 0.35, 0.7, 0.0, 0.1],
        ]
    )
    m = Matcher(0.7, 0.3)
    assert m(q).tolist() == [0, -2, 1, -1, -2]
    # low-quality: gt 0's best is 0.9 (pred 0), gt 1's best is 0.7 (pred 2): no change
    assert Matcher(0.8, 0.3, allow_low_quality_matches=True)(q).tolist() == [0, -2, 1, -1, -2]
    q2 = q.clone()
    q2[1, 2] = 0.4
    q2[1, 1] = 0.4  # gt 1's best 0.4 reached by preds 1 and 2 (tie): both matched to argmax
    assert Matcher(0.7, 0.3)(q2).tolist() == [0, -2, -2, -1, -2]
    assert Matcher(0.7, 0.3, True)(q2).tolist() == [0, 1, 0, -1, -2]


def test_matcher_empty() -> None:
    m = Matcher(0.7, 0.3, True)
    assert m(torch.zeros(0, 4)).tolist() == [-1, -1, -1, -1]
    assert m(torch.zeros(3, 0)).shape == (0,)


def test_matcher_low_quality_ignores_zero_overlap_gt() -> None:
    q = torch.tensor([[0.8, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert Matcher(0.7, 0.3, True)(q).tolist() == [0, -1, -1]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(1, 6),
    n=st.integers(1, 40),
    low_q=st.booleans(),
)
def test_matcher_properties(seed: int, m: int, n: int, low_q: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    q = (torch.rand(m, n, generator=gen) * 10).round() / 10  # ties
    out = Matcher(0.6, 0.3, low_q)(q)
    best, arg = q.max(dim=0)
    for j in range(n):
        v = out[j].item()
        if v >= 0:
            assert v == arg[j].item()
            assert best[j] >= 0.6 or low_q
        elif v == -1:
            assert best[j] < 0.3
        else:
            assert v == -2 and 0.3 <= best[j] < 0.6
    if low_q:
        for g in range(m):
            top = q[g].max()
            if top > 0:
                assert torch.any((q[g] == top) & (out >= 0))


def _labels(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(-1, 3, (n,), generator=gen)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=3),
    batch=st.integers(0, 64),
    frac=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
)
def test_sampler_properties(seed: int, sizes: list[int], batch: int, frac: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    labels = [_labels(gen, n) for n in sizes]
    sampler = BalancedPositiveNegativeSampler(batch, frac, torch.Generator().manual_seed(seed))
    pos, neg = sampler(labels)
    for lab, p, q in zip(labels, pos, neg):
        assert p.dtype == torch.bool and p.shape == lab.shape
        assert torch.all(lab[p] >= 1) and torch.all(lab[q] == 0)
        assert not torch.any(p & q)
        n_pos_avail = int((lab >= 1).sum())
        n_neg_avail = int((lab == 0).sum())
        want_pos = min(int(batch * frac), n_pos_avail)
        assert int(p.sum()) == want_pos
        assert int(q.sum()) == min(batch - want_pos, n_neg_avail)


def test_sampler_is_deterministic_with_generator() -> None:
    labels = [torch.tensor([1] * 50 + [0] * 500 + [-1] * 10)]

    def draw(seed: int):
        s = BalancedPositiveNegativeSampler(64, 0.25, torch.Generator().manual_seed(seed))
        return s(labels)

    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][0], b[1][0])
    assert not torch.equal(a[1][0], c[1][0])
    assert int(a[0][0].sum()) == 16 and int(a[1][0].sum()) == 48
