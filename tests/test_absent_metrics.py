"""Known answers of the absent-class metrics on hand-made logits and features."""
import numpy as np
import pytest

from forgetbench.evaluate.absent import (absent_report, ausuc, average_logit_gap, group_accuracies, ncm_accuracies,
                                         seen_unseen_curve)

SEEN = np.array([True, True, False, False])  # classes 0, 1 seen; 2, 3 absent
LOGITS = np.array([[5.0, 1.0, 0.0, 0.0],   # y=0: right overall and among seen
                   [2.0, 3.0, 4.0, 0.0],   # y=1: an absent class wins overall; right among seen
                   [3.0, 0.0, 2.0, 1.0],   # y=2: a seen class wins overall; right among absent
                   [1.0, 0.0, 0.0, 2.0],   # y=3: right overall and among absent
                   [4.0, 0.0, 1.0, 2.0]])  # y=2: wrong everywhere
LABELS = np.array([0, 1, 2, 3, 2])


def test_group_accuracies_by_hand():
    acc = group_accuracies(LOGITS, LABELS, SEEN)
    assert acc == pytest.approx({"all_all": 2 / 5 * 100, "seen_all": 1 / 2 * 100, "absent_all": 1 / 3 * 100,
                                 "seen_seen": 100.0, "absent_absent": 2 / 3 * 100})
    # gamma = 1.5 on the absent logits flips rows 2 and 3 to the absent group (their seen-minus-absent gap < 1.5)
    shifted = group_accuracies(LOGITS, LABELS, SEEN, gamma=1.5)
    assert shifted == pytest.approx({"all_all": 3 / 5 * 100, "seen_all": 50.0, "absent_all": 2 / 3 * 100,
                                     "seen_seen": 100.0, "absent_absent": 2 / 3 * 100})


def test_ausuc_by_hand():
    # gaps (max seen - max absent) per row: 5, -1, 1, -1, 2. Sweeping gamma from -inf to +inf the curve visits
    # (seen/all, absent/all) = (1, 0) -> (1/2, 1/3) -> (1/2, 2/3) -> (1/2, 2/3) -> (0, 2/3).
    seen_acc, absent_acc = seen_unseen_curve(LOGITS, LABELS, SEEN)
    assert seen_acc.tolist() == pytest.approx([1, 0.5, 0.5, 0.5, 0])
    assert absent_acc.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    trapezoids = 0.5 * (0 + 1 / 3) / 2 + 0.5 * 2 / 3
    assert ausuc(LOGITS, LABELS, SEEN) == pytest.approx(trapezoids)  # 5/12


def test_curve_passes_through_the_accuracies_at_every_gamma():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 6)), rng.integers(0, 6, 200)
    seen = np.array([True, False, True, True, False, False])
    seen_acc, absent_acc = seen_unseen_curve(logits, labels, seen)
    gaps = np.unique(logits[:, seen].max(1) - logits[:, ~seen].max(1))
    between = np.concatenate([[gaps[0] - 1], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1] + 1]])
    assert len(seen_acc) == len(between)
    for i, gamma in enumerate(between):  # one gamma inside each interval between flips: one point of the curve
        acc = group_accuracies(logits, labels, seen, gamma)
        assert (100 * seen_acc[i], 100 * absent_acc[i]) == pytest.approx((acc["seen_all"], acc["absent_all"]))
    ends = group_accuracies(logits, labels, seen)
    assert seen_acc[0] * 100 == pytest.approx(ends["seen_seen"]) and absent_acc[-1] * 100 == pytest.approx(
        ends["absent_absent"])
    assert 0 <= ausuc(logits, labels, seen) <= 1


def test_average_logit_gap_by_hand_and_calibration_uses_it():
    train = np.array([[4.0, 2.0, -1.0, 0.0],   # y=0: other seen logit 2, absent mean -0.5
                      [1.0, 5.0, 0.0, 2.0]])   # y=1: other seen logit 1, absent mean 1
    gamma = average_logit_gap(train, [0, 1], SEEN)
    assert gamma == pytest.approx((2 + 1) / 2 - (-0.5 + 1) / 2)  # 1.25
    report = absent_report(LOGITS, LABELS, SEEN, train, [0, 1])
    assert report["gamma"] == pytest.approx(1.25)
    assert report["calibrated"] == pytest.approx(group_accuracies(LOGITS, LABELS, SEEN, 1.25))
    assert report["acc"] == pytest.approx(group_accuracies(LOGITS, LABELS, SEEN))
    assert report["ausuc"] == pytest.approx(5 / 12)


def test_ncm_by_hand():
    train = np.array([[1, 0], [1, 0.2], [0, 1], [0.2, 1], [-1, 0], [-1, -0.2]], dtype=float)
    ytr = np.array([0, 0, 1, 1, 2, 2])
    test = np.array([[1, 0.1], [0.1, 1], [0.7, 0.7], [-1, 0.1]])
    yte = np.array([0, 1, 2, 2])  # the third is closer to classes 0 and 1 than to class 2
    acc = ncm_accuracies(train, ytr, test, yte, np.array([True, False, False]))
    assert acc == pytest.approx({"all_all": 75.0, "seen_all": 100.0, "absent_all": 2 / 3 * 100})
    with pytest.raises(ValueError, match="no training sample"):
        ncm_accuracies(train[:4], ytr[:4], test, yte, np.array([True, False, False]))
