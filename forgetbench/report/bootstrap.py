"""Paired bootstrap intervals of mean ΔLP over seeds AND test images, and ranks as tie groups.

A run's mean ΔLP is, per held-out dataset, the fine-tuned linear probe's accuracy minus the pre-trained one's on the
same test images, averaged over datasets. Two sources of noise: the seeds (which fine-tune, which probe fit) and the
fixed test images. One bootstrap draw resamples both: seeds with replacement among a setting's runs, and test images
with replacement per dataset. The image draws are shared by every method of a table (``ImageDraws``), so that the
fine-tuned and pre-trained accuracies, and two methods, are compared on the same resampled images (paired). A
deterministic method (every seed the same) keeps only the image part of the uncertainty: its interval is not a
fake "± 0.00". Intervals are percentile intervals (2.5%, 97.5%).

Ranks as tie groups: the method with the best mean leads; every method whose interval overlaps the leader's shares
its rank; then the best of the rest leads the next group, and so on. A group's rank is 1 + the number of methods in
the groups before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..evaluate.per_image import unpack

DRAWS = 2000
LEVEL = 0.95
SEED = 0  # the bootstrap's own seed: the same records give the same intervals


@dataclass(frozen=True)
class Interval:
    mean: float  # the point estimate (no resampling)
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __contains__(self, x: float) -> bool:
        return self.low <= x <= self.high


class ImageDraws:
    """``draws`` resamplings of each dataset's test images, as counts per image ([draws, n]); one instance per table
    so that every method is resampled on the same images."""

    def __init__(self, sizes: Mapping[str, int], draws: int = DRAWS, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.draws = draws
        self.counts = {name: rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)
                       for name, n in sorted(sizes.items())}


def differences(record: Any) -> dict[str, np.ndarray]:
    """Per held-out dataset, [n] in {-1, 0, 1}: fine-tuned probe right minus pre-trained probe right, per image."""
    out = {}
    for name, m in record.metrics.heldout.items():
        if m.correct is None or "lp" not in m.correct or "lp_reference" not in m.correct:
            raise ValueError(f"run {record.run_id} has no per-image correctness of {name}'s linear probes "
                             f"(metrics.heldout.{name}.correct): it predates intervals; rerun it")
        out[name] = unpack(m.correct["lp"]).astype(np.int8) - unpack(m.correct["lp_reference"]).astype(np.int8)
    return out


def _per_run_draws(runs: Sequence[Mapping[str, np.ndarray]], images: ImageDraws) -> tuple[np.ndarray, np.ndarray]:
    """(point [runs], draws [runs, draws]): each run's mean ΔLP in points, as measured and under each image draw."""
    names = sorted(runs[0])
    point = np.zeros(len(runs))
    per_draw = np.zeros((len(runs), images.draws))
    for name in names:
        d = np.stack([r[name] for r in runs]).astype(np.float64)  # [runs, n]
        n = d.shape[1]
        point += 100.0 * d.mean(1)
        per_draw += 100.0 * (d @ images.counts[name].T) / n
    return point / len(names), per_draw / len(names)


def _interval(point: float, draws: np.ndarray) -> Interval:
    tail = (1.0 - LEVEL) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(float(point), float(low), float(high))


def _seed_draws(n_runs: int, images: ImageDraws, salt: int) -> np.ndarray:
    """[draws, runs] counts of each run in each draw (runs resampled with replacement)."""
    rng = np.random.default_rng([SEED, salt])
    return rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=images.draws).astype(np.float64)


def mean_draws(runs: Sequence[Mapping[str, np.ndarray]], images: ImageDraws, salt: int = 0) -> tuple[float, np.ndarray]:
    """(point, [draws]): the mean over ``runs`` of each run's per-image values (dataset -> [n]) averaged per dataset
    and over datasets, in points (x 100), as measured and under each joint draw of seeds and images."""
    point, per_draw = _per_run_draws(runs, images)
    seeds = _seed_draws(len(runs), images, salt)
    return float(point.mean()), (seeds * per_draw.T).sum(1) / len(runs)


def interval_of(point: float, draws: np.ndarray) -> Interval:
    """The percentile interval (``LEVEL``) of ``draws`` around ``point``."""
    return _interval(point, draws)


def mean_delta_interval(runs: Sequence[Mapping[str, np.ndarray]], images: ImageDraws, salt: int = 0) -> Interval:
    """Mean ΔLP over ``runs`` (each ``differences(record)``) with its paired bootstrap interval."""
    return _interval(*mean_draws(runs, images, salt))


def paired_difference(a: Mapping[int, Mapping[str, np.ndarray]], b: Mapping[int, Mapping[str, np.ndarray]],
                      images: ImageDraws) -> Interval:
    """Mean ΔLP of ``a`` minus ``b`` (seed -> ``differences``), over the seeds both have, resampling those seeds
    jointly and the images: the paired comparison of two methods."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two settings share no seed; a paired comparison needs the same seeds")
    pa, da = _per_run_draws([a[s] for s in common], images)
    pb, db = _per_run_draws([b[s] for s in common], images)
    seeds = _seed_draws(len(common), images, 0)
    draws = (seeds * (da - db).T).sum(1) / len(common)
    return _interval(float((pa - pb).mean()), draws)


def tie_ranks(intervals: Mapping[str, Interval]) -> dict[str, int]:
    """Rank of each name as tie groups (module docstring): higher mean is better."""
    rest = sorted(intervals, key=lambda k: (-intervals[k].mean, k))
    ranks: dict[str, int] = {}
    while rest:
        leader = intervals[rest[0]]
        group = [k for k in rest if intervals[k].overlaps(leader)]
        rank = 1 + len(ranks)
        for k in group:
            ranks[k] = rank
        rest = [k for k in rest if k not in ranks]
    return ranks
