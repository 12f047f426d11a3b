"""The feature-drift metrics, each registered once: its name, how it is shown, its direction and bounds, how it is
computed.

Everything that knows a drift reads it from here: the task schema (``evaluate.drift``), the evaluation, the record
checks (bounds), the summary (``drift_<name>_mean``), the leaderboard columns, the audit's tables and ``--fail-if``
names, and the figures. A new drift metric is one ``register_drift(DriftMetric(...))`` call; its ``compute`` gets the
reference's and the tuned encoder's features of the same test images (rows aligned), their labels and the run's seed.
The order of registration is the order of every table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..registry import Registry
from .drift import kernel_drift, l2_drift
from .otdd import otdd
from .probe import normalize

#: Lowest value a record may hold for a distance that is >= 0 in exact arithmetic (debiased estimates can dip below).
ROUNDING = 1e-6


@dataclass(frozen=True)
class DriftMetric:
    """One way to measure how far the held-out features moved (higher = further from the pre-trained model)."""

    name: str  # in task files (``evaluate.drift``) and records (``metrics.heldout.<dataset>.drift.<name>``)
    title: str  # short: legends, panel titles, audit plots
    column: str  # table column title (leaderboard, audit report)
    description: str  # what is measured, as an axis label
    upper: float  # the largest possible value (math.inf when unbounded)
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray, int], float]  # (reference, tuned, labels, seed) -> value
    figure_rank: int = 0  # panels of the correlation figure, lowest first
    lower: float = -ROUNDING  # the smallest value a record may hold
    higher_is_better: bool = False

    @property
    def summary_key(self) -> str:
        """The run-level statistic in ``metrics.summary``: the mean over held-out datasets."""
        return f"drift_{self.name}_mean"


#: Every drift metric, by name, in registration order (``entries()``).
DRIFT_METRICS = Registry("drift metric")


def register_drift(metric: DriftMetric) -> DriftMetric:
    DRIFT_METRICS.register(metric.name, metric)
    return metric


def drift_metrics() -> list[DriftMetric]:
    """The registered drift metrics, in registration order (the order of every table)."""
    return list(DRIFT_METRICS.entries())


def compute_drifts(names, f_ref: np.ndarray, f_tuned: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """The drifts ``names`` (a task's ``evaluate.drift``) between two encoders' features of the same images.

    They are computed in the order the task lists them: OTDD's last digits (1e-13) depend on what the BLAS library
    ran just before it, so a fixed order keeps reruns bit-identical.
    """
    return {name: float(DRIFT_METRICS.get(name).compute(f_ref, f_tuned, labels, seed)) for name in names}


register_drift(DriftMetric(
    name="l2", title="L2", column="L2 drift", upper=4.0, figure_rank=1,
    description="L2 drift (held-out features, pre-trained vs fine-tuned)",
    compute=lambda f_ref, f_tuned, labels, seed: l2_drift(f_ref, f_tuned)))
register_drift(DriftMetric(
    name="otdd", title="OTDD", column="OTDD", upper=math.inf, figure_rank=0,
    description="OTDD (held-out features, pre-trained vs fine-tuned)",
    compute=lambda f_ref, f_tuned, labels, seed: otdd(normalize(f_ref), labels, normalize(f_tuned), labels,
                                                      label_cost="gaussian", seed=seed).distance))
register_drift(DriftMetric(
    name="kernel", title="kernel", column="Kernel drift", upper=2.0, figure_rank=2,
    description="kernel drift (CKA-like, held-out features, pre-trained vs fine-tuned)",
    compute=lambda f_ref, f_tuned, labels, seed: kernel_drift(f_ref, f_tuned, max_samples=1000, seed=seed)))
