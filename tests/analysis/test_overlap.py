"""Updated-row sets and their overlap ratio, against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from migu.analysis import chance_overlap, kept_rows, off_diagonal_mean, overlap_matrix, updated_rows


def test_overlap_hand_example() -> None:
    # d_out = 4, T = 0.5: floor(0.5 * 4) = 2 rows masked, the top 2 kept.
    stats = torch.tensor(
        [
            [0.4, 0.3, 0.2, 0.1],  # A = {0, 1}
            [0.1, 0.2, 0.3, 0.4],  # B = {2, 3}
            [0.4, 0.1, 0.3, 0.2],  # C = {0, 2}
        ]
    )
    keep = updated_rows(stats, 0.5)
    assert keep.tolist() == [
        [True, True, False, False],
        [False, False, True, True],
        [True, False, True, False],
    ]
    m = overlap_matrix(keep)
    expected = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.5, 0.5, 1.0]])
    np.testing.assert_allclose(m, expected)
    assert off_diagonal_mean(m) == pytest.approx((0 + 0.5 + 0.5) * 2 / 6)
    assert chance_overlap(4, 0.5) == 0.5


def test_overlap_is_row_normalised_for_unequal_sets() -> None:
    keep = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)  # |A| = 3, |B| = 1, |A ∩ B| = 1
    m = overlap_matrix(keep)
    assert m[0, 1] == pytest.approx(1 / 3)  # |A ∩ B| / |A|
    assert m[1, 0] == pytest.approx(1.0)  # |A ∩ B| / |B|


def test_empty_set_row_is_nan() -> None:
    m = overlap_matrix(np.array([[0, 0], [1, 0]], dtype=bool))
    assert math.isnan(m[0, 0]) and math.isnan(m[0, 1])
    assert m[1].tolist() == [0.0, 1.0]


def test_ties_go_to_the_lower_index_and_counts_are_floor_robust() -> None:
    keep = updated_rows(torch.ones(1, 4), 0.5)
    assert keep.tolist() == [[True, True, False, False]]
    assert kept_rows(100, 0.29) == 71  # floor(28.999...) must still be 29 masked
    assert kept_rows(10, 0.7) == 3
    assert chance_overlap(1536, 0.7) == pytest.approx(kept_rows(1536, 0.7) / 1536)


def test_symmetric_with_unit_diagonal_for_topk_sets() -> None:
    g = torch.Generator().manual_seed(0)
    stats = torch.rand(5, 50, generator=g)
    m = overlap_matrix(updated_rows(stats, 0.7))
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0)
    assert ((m >= 0) & (m <= 1)).all()


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="n_tasks, d_out"):
        updated_rows(torch.ones(4), 0.5)
    with pytest.raises(ValueError, match="n_tasks, d_out"):
        overlap_matrix(np.ones(3, dtype=bool))
    assert math.isnan(off_diagonal_mean(np.ones((1, 1))))
