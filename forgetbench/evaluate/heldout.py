"""Held-out metrics, typed: per dataset, how the tuned encoder's accuracies and features differ from the pre-trained
model's, and the run-level summary of them (``metrics.summary``), which must equal what its datasets give.

What the evaluation returns, and the part of every fine-tune record that holds it (``forgetbench.records``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..schema import Choice, Integer, MapOf, Number, Problems, Section, entry, extras, join
from .drift_metrics import ROUNDING, drift_metrics
from .per_image import PerImage, block_problems

#: Absolute tolerance of the consistency checks (a delta against its parts, a summary against the datasets).
CONSISTENCY_TOL = 1e-6
PERCENT = Number(ge=0, le=100, unit="percent")
POINTS = Number(ge=-100, le=100, unit="points")
_DISTANCE = "a distance"


def difference(problems: Problems, path: str, obj: Any, key: str, a: str, b: str) -> None:
    """``obj.key`` must equal ``obj.a - obj.b`` (all three numbers)."""
    value, x, y = getattr(obj, key), getattr(obj, a), getattr(obj, b)
    if abs(value - (x - y)) > CONSISTENCY_TOL:
        problems.add(join(path, key), f"is {value!r} but {a} - {b} = {x - y!r} (tolerance {CONSISTENCY_TOL})")


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)  # fsum: exact, so the result does not depend on dataset order


@dataclass(frozen=True, kw_only=True)
class CheckpointHeldout:
    """One held-out dataset at a training checkpoint: accuracies may be left out (Δ and drift suffice there)."""

    FULL: ClassVar[bool] = False  # the final model: the linear probe's three numbers are required

    lp: float | None = entry(PERCENT, None, omit_if_none=True)
    lp_reference: float | None = entry(PERCENT, None, omit_if_none=True)
    delta_lp: float | None = entry(POINTS, None, omit_if_none=True)
    zs: float | None = entry(PERCENT, None, omit_if_none=True)  # zero-shot needs a text tower
    zs_reference: float | None = entry(PERCENT, None, omit_if_none=True)
    delta_zs: float | None = entry(POINTS, None, omit_if_none=True)
    drift: Mapping[str, float] | None = entry(MapOf(Number()), None, omit_if_none=True)
    extra: Mapping[str, Any] = extras()

    def check_fields(self, path: str, problems: Problems) -> None:
        """Each metric's three numbers come together (a checkpoint may carry its Δ alone); Δ = tuned - reference."""
        for metric in ("lp", "zs"):
            keys = (metric, f"{metric}_reference", f"delta_{metric}")
            present = [getattr(self, k) is not None for k in keys]
            if not any(present) and (metric == "zs" or not self.FULL):
                continue
            needed = keys if self.FULL or present[0] or present[1] else keys[2:]
            missing = [k for k in needed if getattr(self, k) is None]
            for k in missing:
                problems.add(join(path, k), "missing required field")
            if all(present):
                difference(problems, path, self, keys[2], keys[0], keys[1])
        bounds = {m.name: (m.lower, m.upper) for m in drift_metrics()}
        for name, value in (self.drift or {}).items():
            lo, hi = bounds.get(name, (-ROUNDING, math.inf))
            Number(ge=lo, le=hi, unit=_DISTANCE)(value, join(join(path, "drift"), name), problems)


#: The classifiers of a held-out dataset whose per-image correctness a record may keep (``metrics.heldout.<d>.correct``).
HELDOUT_CORRECT = ("lp", "lp_reference", "zs", "zs_reference")


@dataclass(frozen=True, kw_only=True)
class HeldoutMetrics(CheckpointHeldout):
    """One held-out dataset, for the final model: linear-probe (and zero-shot) accuracy, their Δ, feature drift, and
    (optionally) which test images each classifier got right (``forgetbench.evaluate.per_image``)."""

    FULL: ClassVar[bool] = True

    correct: Mapping[str, str] | None = entry(MapOf(PerImage(), key=Choice(HELDOUT_CORRECT)), None, omit_if_none=True)

    def check_fields(self, path: str, problems: Problems) -> None:
        super().check_fields(path, problems)
        if self.correct is not None:
            block_problems(self.correct, {k: getattr(self, k) for k in HELDOUT_CORRECT}, join(path, "correct"),
                           problems)


def summarize_heldout(heldout: Mapping[str, CheckpointHeldout], weight_drift: float | None = None) -> dict[str, float]:
    """The ``metrics.summary`` block: mean and worst (min) delta LP/ZS over held-out datasets, mean drifts.

    Each statistic is taken over the datasets that have it; a statistic no dataset has is left out.
    ``weight_drift`` is a model-level number, copied in when given.
    """
    out: dict[str, float] = {}
    for key in ("delta_lp", "delta_zs"):
        vals = [float(getattr(m, key)) for m in heldout.values() if getattr(m, key) is not None]
        if vals:
            out[f"{key}_mean"] = _mean(vals)
            out[f"{key}_worst"] = min(vals)
    for metric in drift_metrics():
        vals = [float(m.drift[metric.name]) for m in heldout.values() if m.drift and metric.name in m.drift]
        if vals:
            out[metric.summary_key] = _mean(vals)
    if weight_drift is not None:
        out["weight_drift"] = float(weight_drift)
    return out


def summary_problems(summary: Mapping[str, float], heldout: Mapping[str, CheckpointHeldout], path: str,
                     problems: Problems) -> None:
    """Every statistic ``summarize_heldout`` derives from the datasets must be in ``summary`` and equal to it."""
    wd = summary.get("weight_drift")
    if wd is not None:
        Number(ge=0, unit="a relative distance")(wd, join(path, "weight_drift"), problems)
    for key, value in summarize_heldout(heldout, weight_drift=wd).items():
        if key not in summary:
            problems.add(join(path, key), f"missing required field (the held-out datasets give {value!r})")
        elif abs(summary[key] - value) > CONSISTENCY_TOL:
            problems.add(join(path, key), f"is {summary[key]!r} but the held-out datasets give {value!r} "
                                          f"(tolerance {CONSISTENCY_TOL})")


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """Held-out metrics at one training step (``trajectory``); the last one is the final model."""

    step: int = entry(Integer(ge=0))
    heldout: Mapping[str, CheckpointHeldout] = entry(MapOf(Section(CheckpointHeldout)))
    summary: Mapping[str, float] = entry(MapOf(Number()))
    extra: Mapping[str, Any] = extras()

    def check_fields(self, path: str, problems: Problems) -> None:
        summary_problems(self.summary, self.heldout, join(path, "summary"), problems)
