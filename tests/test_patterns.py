"""Patterns: each projection is the true Euclidean projection, ties go to the lower index, counts are exact."""

import itertools

import numpy as np
import pytest

from layerprune.problems import Pattern, balanced_counts, parse_pattern, top_k_per_row


def _allowed(mask: np.ndarray, pattern: str, k: int) -> bool:
    """Independent feasibility rule (not Pattern.is_feasible): the support sizes the pattern allows."""
    out, inp = mask.shape
    if pattern == "unstructured":
        return mask.sum() <= k
    if pattern == "row":
        return bool(np.all(mask.sum(axis=1) <= k))
    n, m = map(int, pattern.split(":"))
    return bool(np.all(mask.reshape(out, inp // m, m).sum(axis=-1) <= n))


def _brute_force_projection(z: np.ndarray, pattern: str, k: int) -> tuple[float, list[np.ndarray]]:
    """min ‖z − z⊙S‖² over every allowed support S, and all supports reaching it."""
    best, argbest = np.inf, []
    for bits in itertools.product([False, True], repeat=z.size):
        S = np.array(bits).reshape(z.shape)
        if not _allowed(S, pattern, k):
            continue
        d = float(np.sum((z * ~S) ** 2))
        if d < best - 1e-12:
            best, argbest = d, [S]
        elif abs(d - best) <= 1e-12:
            argbest.append(S)
    return best, argbest


CASES = [
    # (pattern, sparsity, shape, per-unit count the pattern allows)
    ("unstructured", 0.5, (3, 4), 6),
    ("unstructured", 0.7, (3, 4), 4),  # round(0.3 · 12) = 4
    ("unstructured", 0.9, (2, 6), 1),  # round(0.1 · 12) = 1
    ("row", 0.5, (3, 4), 2),
    ("row", 0.75, (2, 6), 2),  # round(0.25 · 6) = 2 (banker's rounding of 1.5)
    ("2:4", None, (3, 4), 2),
    ("1:4", None, (1, 8), 1),
    ("1:3", None, (2, 6), 1),
    ("3:4", None, (2, 4), 3),
]


@pytest.mark.parametrize("pattern,sparsity,shape,k", CASES)
def test_projection_is_the_euclidean_projection(rng, pattern, sparsity, shape, k):
    pat = parse_pattern(pattern)
    s = pat.implied_sparsity() if sparsity is None else sparsity
    for _ in range(3):
        z = rng.standard_normal(shape)  # continuous: the optimum is unique almost surely
        best, argbest = _brute_force_projection(z, pattern, k)
        assert len(argbest) == 1
        proj, keep = pat.project(z, s)
        assert keep.dtype == bool
        np.testing.assert_array_equal(keep, argbest[0])
        np.testing.assert_array_equal(proj, z * argbest[0])
        assert np.sum((z - proj) ** 2) == pytest.approx(best, rel=1e-12, abs=1e-15)


def _stable_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Reference tie rule: sort by (−score, index) and keep the first k."""
    order = np.lexsort((np.arange(scores.size), -scores.ravel()))
    keep = np.zeros(scores.size, dtype=bool)
    keep[order[:k]] = True
    return keep.reshape(scores.shape)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.8), ("row", 0.5),
                                              ("row", 0.7), ("2:4", None), ("1:4", None), ("4:8", None)])
def test_ties_go_to_the_lower_index(rng, pattern, sparsity):
    pat = parse_pattern(pattern)
    s = pat.implied_sparsity() if sparsity is None else sparsity
    out, inp = 6, 16
    for levels in (1, 2, 3):  # levels=1: all scores equal
        scores = rng.integers(0, levels, size=(out, inp)).astype(np.float32)
        keep = pat.mask(scores, s)
        if pattern == "unstructured":
            ref = _stable_top(scores, int(round((1 - s) * out * inp)))
        elif pattern == "row":
            ref = np.stack([_stable_top(r, int(round((1 - s) * inp))) for r in scores])
        else:
            m = pat.m
            ref = np.stack([
                np.concatenate([_stable_top(r[g:g + m], pat.n) for g in range(0, inp, m)]) for r in scores
            ])
        np.testing.assert_array_equal(keep, ref)
        # The same scores give the same mask every time.
        np.testing.assert_array_equal(pat.mask(scores.copy(), s), keep)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_counts_are_exact(rng, sparsity):
    out, inp = 13, 40  # odd sizes: the rounding matters
    z = rng.standard_normal((out, inp))
    keep = parse_pattern("unstructured").mask(np.abs(z), sparsity)
    assert keep.sum() == int(round((1 - sparsity) * out * inp))
    keep = parse_pattern("row").mask(np.abs(z), sparsity)
    assert np.all(keep.sum(axis=1) == int(round((1 - sparsity) * inp)))


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8", "1:2", "3:5"])
def test_nm_counts_are_exact(rng, pattern):
    pat = parse_pattern(pattern)
    out, inp = 7, 8 * 5 * 3
    keep = pat.mask(np.abs(rng.standard_normal((out, inp))), pat.implied_sparsity())
    assert np.all(keep.reshape(out, -1, pat.m).sum(axis=-1) == pat.n)
    assert pat.kept_per_layer((out, inp), pat.implied_sparsity()) == keep.sum()
    assert pat.implied_sparsity() == pytest.approx(1 - pat.n / pat.m)


def test_is_feasible_detects_one_extra_entry(rng):
    out, inp = 5, 16
    z = rng.standard_normal((out, inp))
    for name, s in [("unstructured", 0.6), ("row", 0.5), ("2:4", 0.5), ("1:4", 0.75)]:
        pat = parse_pattern(name)
        keep = pat.mask(np.abs(z), s)
        assert pat.is_feasible(keep, s)
        worse = keep.copy()
        r, c = np.argwhere(~keep)[0]
        worse[r, c] = True
        assert not pat.is_feasible(worse, s), name
        # Fewer nonzeros than allowed is still feasible ("at most").
        fewer = keep.copy()
        fewer[tuple(np.argwhere(keep)[0])] = False
        assert pat.is_feasible(fewer, s)


def test_top_k_per_row_edge_counts(rng):
    scores = np.abs(rng.standard_normal((4, 9)))
    keep = top_k_per_row(scores, np.array([0, 9, 1, 5]))
    assert keep.sum(axis=1).tolist() == [0, 9, 1, 5]
    assert keep[2, np.argmax(scores[2])]
    np.testing.assert_array_equal(keep[3], scores[3] >= np.sort(scores[3])[-5])


def test_balanced_counts():
    c = balanced_counts(103, 10)
    assert c.sum() == 103 and c.max() - c.min() <= 1


def test_parse_pattern_names():
    assert parse_pattern("2:4") == Pattern("nm", 2, 4)
    assert parse_pattern(" 1 : 4 ").name == "1:4"
    assert parse_pattern("ROW").name == "row"
    assert parse_pattern("unstructured").implied_sparsity() is None
    assert parse_pattern(Pattern("row")) is not None


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "2:2", "", "structured", "2:4:8", "a:b"])
def test_bad_pattern_strings(bad):
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(bad)


def test_pattern_not_a_string():
    with pytest.raises(ValueError, match="pattern must be a string"):
        parse_pattern(24)


def test_m_must_divide_the_input_dimension():
    with pytest.raises(ValueError, match="M=4 does not divide the input dimension 18"):
        parse_pattern("2:4").mask(np.ones((2, 18)), 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 5000), (3, 9000), (2, 8192), (40, 37)])
def test_radix_select_matches_sort(rng, dtype, shape):
    """The GPU's radix select (bitwise on float patterns, chunked counts), run on NumPy."""
    from layerprune.problems.patterns import kth_largest_per_row

    scores = np.abs(rng.standard_normal(shape)).astype(dtype)
    scores[:, : shape[1] // 4] = scores[:, :1]  # many ties
    counts = rng.integers(1, shape[1] + 1, size=shape[0])
    radix = kth_largest_per_row(scores, counts, method="radix")
    assert np.array_equal(radix, kth_largest_per_row(scores, counts, method="sort"))


def _reference_top_k(scores, counts):
    """Stable reference: sort each row by (−score, index) and keep the first counts[i]."""
    keep = np.zeros(scores.shape, dtype=bool)
    for i, row in enumerate(scores):
        order = np.lexsort((np.arange(row.size), -row))
        keep[i, order[: counts[i]]] = True
    return keep


@pytest.mark.parametrize("shape", [(1, 9000), (5, 40), (3, 8193)])
def test_top_k_with_excess_ties_matches_reference(rng, shape, monkeypatch):
    """Rows with more ties at the threshold than places: the lower indices win, through the
    chunked tie scan, with per-row counts and with one int for every row, on both selectors."""
    from layerprune.problems import patterns

    scores = rng.integers(0, 4, size=shape).astype(np.float32)  # few distinct values: ties everywhere
    counts = rng.integers(0, shape[1] + 1, size=shape[0])
    select = patterns.kth_largest_per_row
    for method in ("sort", "radix"):
        monkeypatch.setattr(patterns, "kth_largest_per_row", lambda s, c, m=method: select(s, c, method=m))
        np.testing.assert_array_equal(top_k_per_row(scores, counts), _reference_top_k(scores, counts))
        k = int(counts[0])
        np.testing.assert_array_equal(top_k_per_row(scores, k), _reference_top_k(scores, [k] * shape[0]))


def test_nm_rank_selection_matches_reference(rng):
    scores = rng.integers(0, 3, size=(6, 32)).astype(np.float32)  # ties inside groups
    keep = parse_pattern("2:4").mask(scores, 0.5)
    ref = _reference_top_k(scores.reshape(-1, 4), [2] * (scores.size // 4)).reshape(scores.shape)
    np.testing.assert_array_equal(keep, ref)


@pytest.mark.parametrize("name,sparsity", [("unstructured", 0.7), ("unstructured", 0.0), ("row", 0.6), ("2:4", 0.5)])
def test_projection_mask_in_scratch_equals_mask_of_abs(rng, name, sparsity):
    """ALPS's in-place projection (selection inside a scratch array) gives mask(|z|), ties included."""
    pat = parse_pattern(name)
    z = rng.integers(-3, 4, size=(12, 40)).astype(np.float32)  # ties and zeros
    scratch = np.empty_like(z)
    np.testing.assert_array_equal(pat.projection_mask(z, sparsity, scratch), pat.mask(np.abs(z), sparsity))
    z = rng.standard_normal((3, 4)).astype(np.float32)  # a tiny layer (the rank path of mask)
    if name != "2:4":
        np.testing.assert_array_equal(pat.projection_mask(z, sparsity, np.empty_like(z)), pat.mask(np.abs(z), sparsity))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 3_000_001), (3, 9000), (2, 8192), (2048, 300), (600, 4096)])
def test_gpu_radix_select_and_projection_match_numpy(rng, shape):
    """The device's radix select (fused counting kernel) and ALPS's in-scratch projection
    against NumPy's sort, with ties, on every counting branch."""
    import cupy

    from layerprune.problems.patterns import kth_largest_per_row

    scores = np.abs(rng.standard_normal(shape)).astype(np.float32)
    scores[:, : shape[1] // 4] = scores[:, :1]  # many ties
    counts = rng.integers(1, shape[1] + 1, size=shape[0])
    expected = kth_largest_per_row(scores, counts, method="sort")
    for method in ("radix", "sort", None):  # None: the size-based default
        got = kth_largest_per_row(cupy.asarray(scores), cupy.asarray(counts), method=method)
        np.testing.assert_array_equal(cupy.asnumpy(got), expected)
    z = (scores * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32)
    for name, s in [("unstructured", 0.7), ("row", 0.6)]:
        pat = parse_pattern(name)
        zg = cupy.asarray(z)
        gpu = pat.projection_mask(zg, s, cupy.empty_like(zg))
        np.testing.assert_array_equal(cupy.asnumpy(gpu), pat.mask(np.abs(z), s))


def test_long_nm_groups_keep_n_per_group(rng):
    """N:M with M > 127 (the rank is counted in a wider integer there)."""
    pat = parse_pattern("4:256")
    keep = pat.mask(rng.random((2, 512)), pat.implied_sparsity())
    np.testing.assert_array_equal(keep.reshape(2, 2, 256).sum(-1), 4)
    assert pat.is_feasible(keep, pat.implied_sparsity())


def test_projection_mask_refuses_a_non_contiguous_scratch(rng):
    z = rng.standard_normal((30, 40)).astype(np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        parse_pattern("unstructured").projection_mask(z, 0.5, np.empty((40, 30), np.float32).T)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_stacked_pattern_selects_each_layer_on_its_own(sparsity):
    from layerprune.problems import StackedPattern

    rng = np.random.default_rng(31)
    rows = (5, 3, 7)
    z = rng.standard_normal((sum(rows), 20)) * np.repeat([1.0, 10.0, 0.1], rows)[:, None]
    stacked = StackedPattern.of(parse_pattern("unstructured"), rows)
    keep = stacked.mask(np.abs(z), sparsity)
    base = parse_pattern("unstructured")
    start = 0
    for r in rows:  # the same as masking each layer alone (a shared count would take the ×10 layer's entries)
        assert np.array_equal(keep[start:start + r], base.mask(np.abs(z[start:start + r]), sparsity))
        start += r
    scratch = np.empty_like(z)
    assert np.array_equal(stacked.projection_mask(z, sparsity, scratch), keep)
    assert stacked.is_feasible(keep, sparsity)
    assert stacked.kept_per_layer(z.shape, sparsity) == int(keep.sum())
    assert not stacked.is_feasible(base.mask(np.abs(z), sparsity), sparsity)  # the shared count breaks it
    with pytest.raises(ValueError, match="rows"):
        stacked.mask(np.abs(z[:-1]), sparsity)
