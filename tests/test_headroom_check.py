"""bench/headroom_check.py: the 95% interval and the bars, on records whose answer is known."""
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("headroom_check", ROOT / "bench" / "headroom_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(task, method, seed, acc, dlp, lr=3e-4):
    return {"task": {"name": task, "spec": {"train": {"lr": lr}}}, "method": {"name": method}, "seed": seed,
            "metrics": {"target": {"acc": acc}, "summary": {"delta_lp_mean": dlp}}}


def test_student_t_interval_known_answer():
    mean, half = _module().mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) * s / sqrt(n)
    assert math.isnan(_module().mean_interval([5.0])[1])


def test_bars_pass_and_fail_on_the_means():
    m = _module()
    records = [_record("a", "lp", 0, 50.0, 0.0)] + [_record("a", "ft", s, 66.0 + s, -4.0 - s) for s in range(3)]
    records += [_record("b", "lp", 0, 50.0, 0.0)] + [_record("b", "ft", s, 64.0, -10.0) for s in range(3)]
    records += [_record("c", "lp", 0, 50.0, 0.0)] + [_record("c", "ft", s, 80.0, -2.0) for s in range(3)]
    rows = {r[0]: r for r in m.rows_for(records, "ft")}
    assert rows["a"][4] == "67.0 ± 2.5" and rows["a"][5] == "+17.0" and rows["a"][-1] == "yes"
    assert rows["b"][-1] == "NO"  # gain 14 < 15
    assert rows["c"][-1] == "NO"  # forgetting -2 > -3
