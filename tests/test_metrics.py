"""Metrics on hand-made accuracy matrices."""

import pytest

from migu.metrics import (
    accuracy,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forward_transfer,
    macro_f1,
    summarize,
)

# R[i][j]: accuracy on task j after training task i.
R = [
    [0.9, 0.2, 0.1],
    [0.7, 0.8, 0.3],
    [0.6, 0.5, 0.9],
]


def test_acc_is_mean_of_last_row_per_task() -> None:
    assert average_accuracy(R) == pytest.approx((0.6 + 0.5 + 0.9) / 3)


def test_bwt() -> None:
    assert backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)


def test_fwt_against_untrained_baseline() -> None:
    b = [0.25, 0.1, 0.2]
    assert forward_transfer(R, b) == pytest.approx(((0.2 - 0.1) + (0.3 - 0.2)) / 2)


def test_forgetting_uses_best_earlier_accuracy() -> None:
    # task 0: best of R[0][0], R[1][0] = 0.9 -> 0.3; task 1: R[1][1] = 0.8 -> 0.3
    assert average_forgetting(R) == pytest.approx(0.3)
    r2 = [[0.5, 0.0], [0.9, 0.9]]
    assert average_forgetting(r2) == pytest.approx(-0.4)


def test_single_task_and_shape_errors() -> None:
    assert backward_transfer([[0.5]]) == 0.0
    with pytest.raises(ValueError, match="square"):
        average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match="baseline"):
        forward_transfer(R, [0.1])


def test_summarize_keys() -> None:
    s = summarize(R)
    assert s["fwt"] is None and set(s) == {"acc", "bwt", "fwt", "forgetting"}


def test_accuracy_and_macro_f1_hand_example() -> None:
    preds = ["a", "a", "b", "c", "x"]
    gold = ["a", "b", "b", "c", "c"]
    assert accuracy(preds, gold) == pytest.approx(3 / 5)
    # a: tp1 fp1 fn0 -> 2/3; b: tp1 fp0 fn1 -> 2/3; c: tp1 fp0 fn1 -> 2/3
    assert macro_f1(preds, gold, classes=["a", "b", "c"]) == pytest.approx(2 / 3)
    # A class never predicted nor present scores 0 and pulls the macro average down.
    assert macro_f1(preds, gold, classes=["a", "b", "c", "d"]) == pytest.approx(0.5)
