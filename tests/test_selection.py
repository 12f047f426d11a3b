"""The selection rule (never reads a test metric) and the bootstrap behind the matched-gain board (known answers)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from forgetbench.errors import SpecError
from forgetbench.evaluate.per_image import pack
from forgetbench.report.bootstrap import (ImageDraws, Interval, differences, mean_delta_interval, paired_difference,
                                          tie_ranks)
from forgetbench.selection import select, selected_seeds, task_params
from forgetbench.tasks import TaskSpec

from pipeline_helpers import tiny_task


def _task(within=1.0, seeds=5):
    return TaskSpec.from_dict({**tiny_task().to_dict(), "seeds": [0, 1, 2],
                               "selection": {"reference": "ft", "within": within, "seeds": seeds}})


def _record(method, params, seed, val, target=None):
    """A record as the selection sees it; ``target`` replaces its target metrics (default: plausible numbers)."""
    if target is None:
        target = SimpleNamespace(acc_val=val, acc=50.0, gain=10.0, correct={"acc": pack(np.ones(4, bool))})
    full = {**task_params(_task(), method), **params}
    return SimpleNamespace(run_id=f"{method}-{params}-{seed}", seed=seed, mode="full",
                           method=SimpleNamespace(name=method, params=full),
                           metrics=SimpleNamespace(target=target, heldout={"d": "test"}, summary={"delta_lp_mean": 1}))


class Poisoned:
    """Test metrics that fail the test when read: the selection may touch acc_val only."""

    def __init__(self, val):
        self.acc_val = val

    def __getattr__(self, name):
        raise AssertionError(f"the selection read the test metric target.{name}")


def _sweep(test_of=lambda val: None):
    rows = [("ft", {}, 80.0), ("ft", {"lr_scale": 0.1}, 70.0),
            ("l2sp", {"alpha": 0.01}, 80.5), ("l2sp", {"alpha": 1.0}, 79.0), ("l2sp", {"alpha": 100.0}, 60.0),
            ("lp", {}, 61.0), ("wise-ft", {"alpha": 1.0}, 80.2), ("wise-ft", {"alpha": 0.5}, 78.0)]
    return [_record(m, p, 0, v, test_of(v)) for m, p, v in rows] + [_record("ft", {}, 3, 10.0, test_of(10.0))]


def test_the_strongest_setting_within_the_bar_is_selected_and_a_method_short_of_it_is_marked():
    chosen = select(_task(), _sweep())
    assert chosen["l2sp"].params["alpha"] == 1.0 and chosen["l2sp"].matched  # exactly 1 point below ft: in
    assert chosen["ft"].params["lr_scale"] == 1.0  # 0.1 is stronger but 10 points short
    assert chosen["wise-ft"].params["alpha"] == 1.0  # stronger is smaller alpha: 0.5 is 2 points short
    assert not chosen["lp"].matched and chosen["lp"].val_acc == 61.0  # no knob, short of the bar: marked
    assert chosen["ft"].seeds == (0,)  # seed 3 (not a sweep seed) is not read: ft's mean stays 80


def test_a_looser_bar_selects_stronger_settings():
    chosen = select(_task(within=25.0), _sweep())
    assert chosen["l2sp"].params["alpha"] == 100.0 and chosen["wise-ft"].params["alpha"] == 0.5
    assert chosen["lp"].matched


def test_the_selection_never_reads_a_test_metric():
    plain = select(_task(), _sweep())
    poisoned = select(_task(), _sweep(test_of=Poisoned))  # any read of a test number fails the test
    garbage = select(_task(), _sweep(test_of=lambda v: SimpleNamespace(acc_val=v, acc=-1e9, gain=float("nan"))))
    assert plain == poisoned == garbage


def test_the_selection_needs_the_reference_and_validation_accuracy():
    with pytest.raises(SpecError, match="no record of the reference 'ft'"):
        select(_task(), [r for r in _sweep() if r.method.name != "ft"])
    with pytest.raises(SpecError, match="no target validation accuracy"):
        select(_task(), [_record("ft", {}, 0, None)])


def test_selected_settings_run_over_the_rule_seeds():
    assert selected_seeds(_task(seeds=5)) == [0, 1, 2, 3, 4]
    assert selected_seeds(_task(seeds=2)) == [0, 1]


# ------------------------------------------------------------------------------------------------- bootstrap

def _run(**datasets):
    """A record of per-image correctness: dataset -> (fine-tuned correct, pre-trained correct)."""
    heldout = {name: SimpleNamespace(correct={"lp": pack(np.asarray(ft, bool)), "lp_reference": pack(np.asarray(ref,
                                                                                                         bool))})
               for name, (ft, ref) in datasets.items()}
    return differences(SimpleNamespace(run_id="r", metrics=SimpleNamespace(heldout=heldout)))


def test_a_constant_difference_has_a_zero_width_interval_at_that_value():
    n = 50
    # every image: fine-tuned right where pre-trained was wrong on a, the same on b -> +100 and 0, mean +50
    runs = [_run(a=(np.ones(n), np.zeros(n)), b=(np.ones(n), np.ones(n))) for _ in range(3)]
    ci = mean_delta_interval(runs, ImageDraws({"a": n, "b": n}, draws=300))
    assert (ci.mean, ci.low, ci.high) == (50.0, 50.0, 50.0)


def test_a_method_compared_with_itself_differs_by_exactly_zero():
    rng = np.random.default_rng(1)
    runs = {s: _run(a=(rng.random(40) < 0.7, rng.random(40) < 0.6)) for s in range(5)}
    images = ImageDraws({"a": 40}, draws=300)
    ci = paired_difference(runs, runs, images)
    assert 0.0 in ci and (ci.mean, ci.low, ci.high) == (0.0, 0.0, 0.0)
    other = {s: _run(a=(np.ones(40), rng.random(40) < 0.6)) for s in range(5)}
    assert paired_difference(other, runs, images).low > 0  # a method right on every image is better, surely


def test_a_deterministic_method_keeps_the_image_uncertainty():
    rng = np.random.default_rng(2)
    ft, ref = rng.random(200) < 0.5, rng.random(200) < 0.5
    runs = [_run(a=(ft, ref))] * 5  # five seeds, the same numbers: no seed noise
    ci = mean_delta_interval(runs, ImageDraws({"a": 200}, draws=500))
    assert ci.mean == pytest.approx(100.0 * (ft.mean() - ref.mean()))
    assert ci.low < ci.mean < ci.high and ci.high - ci.low > 5  # about ±2 standard errors of a 200-image mean


def test_the_interval_follows_the_seeds_spread():
    n = 100
    good, bad = _run(a=(np.ones(n), np.zeros(n))), _run(a=(np.zeros(n), np.zeros(n)))
    ci = mean_delta_interval([good, bad, good, bad], ImageDraws({"a": n}, draws=1000))
    assert ci.mean == 50.0 and ci.low < 30 and ci.high > 70  # four seeds of +100 and 0


def test_tie_groups():
    iv = {"a": Interval(5, 4, 6), "b": Interval(4.5, 3, 5.5), "c": Interval(3, 2.5, 3.8), "d": Interval(2, 1, 2.6),
          "e": Interval(-4, -5, -3)}
    # a leads; b overlaps it. c does not overlap a: it leads the next group, with d (2.6 >= 2.5); e alone
    assert tie_ranks(iv) == {"a": 1, "b": 1, "c": 3, "d": 3, "e": 5}
    assert tie_ranks({"x": Interval(1, 0, 2), "y": Interval(1, 0, 2)}) == {"x": 1, "y": 1}
