"""What a target's ``metric`` reads from result records, one value per seed.

A metric is a term or the difference of two (``absent.ausuc - absent.reference.ausuc``). A term is either

- a dotted path under a record's ``metrics`` (``target.acc``, ``summary.delta_lp_mean``, ``zs.summary.transfer``,
  ``absent.calibrated.absent_all``; a list is averaged), read per record and averaged over the target's tasks; a
  sequence record also has ``<zs|lp>.reference_summary``: the sequence metrics of the pre-trained model, whose
  accuracy matrix repeats its own row (MTIL's "Zero-shot" row: Avg = Last = the mean, Transfer = the mean from the
  second dataset on); or
- ``corr.<drift>.<pearson|spearman>``: the correlation of that drift with ΔLP over every (run, held-out dataset)
  point of the seed's records, pooled over the target's tasks (``forgetbench.report.correlation``).

A seed is measured only when every task of the target has a record of the method for it (a mean over part of the
tasks is not the published quantity).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import SpecError
from ..evaluate.sequences import sequence_metrics

CORRELATIONS = {"pearson": "pearson_r", "spearman": "spearman_rho"}


def terms(metric: str) -> tuple[str, str | None]:
    """(first term, term subtracted from it or None)."""
    first, _, second = metric.partition(" - ")
    return first.strip(), (second.strip() or None)


def metrics_view(record: Any) -> dict[str, Any]:
    """The record's ``metrics`` as plain JSON, with each sequence accuracy's ``reference_summary`` added."""
    view = record.to_json()["metrics"]
    for block in view.values():
        if isinstance(block, dict) and "R" in block and isinstance(block.get("reference"), list):
            block["reference_summary"] = sequence_metrics([block["reference"]] * len(block["R"]))
    return view


def read_path(view: Mapping[str, Any], path: str) -> float | None:
    """The number at the dotted ``path`` (a list of numbers: its mean); None when the record has no such field."""
    node: Any = view
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, list):
        flat = np.asarray(node, dtype=float).ravel()
        return float(flat.mean()) if flat.size else None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def correlation(records: list, term: str) -> float | None:
    """``corr.<drift>.<pearson|spearman>`` over the records' (run, held-out dataset) points."""
    from ..report.correlation import correlations, points  # pandas and scipy: only when a figure target asks
    _, drift, kind = term.split(".")
    frame = points(records)
    if drift not in frame.columns:
        return None
    value = correlations(frame, drifts=[drift], n_boot=0).iloc[0][CORRELATIONS[kind]]
    return float(value) if np.isfinite(value) else None


def check_metric(metric: str) -> None:
    """A SpecError for a ``corr.`` term that is not ``corr.<drift>.<pearson|spearman>``."""
    for term in filter(None, terms(metric)):
        parts = term.split(".")
        if parts[0] == "corr" and (len(parts) != 3 or parts[2] not in CORRELATIONS):
            raise SpecError(f"metric {metric!r}: a correlation term is corr.<drift>.<{'|'.join(CORRELATIONS)}>, "
                            f"got {term!r}")


def per_seed(records: Iterable[Any], tasks: Iterable[str], method: str | None, metric: str) -> dict[int, float]:
    """seed -> the target's measured quantity, for the seeds whose records cover every task."""
    check_metric(metric)
    tasks = tuple(tasks)
    chosen: dict[tuple[int, str], list] = defaultdict(list)  # (seed, task) -> its records of the method
    for rec in records:
        if rec.task.name in tasks and (method is None or rec.method.name == method):
            chosen[(rec.seed, rec.task.name)].append(rec)
    out = {}
    for seed in sorted({s for s, _ in chosen}):
        if not all((seed, t) in chosen for t in tasks):
            continue
        values = [_term(chosen, seed, tasks, t) for t in terms(metric) if t is not None]
        if any(v is None for v in values):
            continue
        out[seed] = values[0] - values[1] if len(values) == 2 else values[0]
    return out


def _term(chosen: Mapping[tuple[int, str], list], seed: int, tasks: tuple[str, ...], term: str) -> float | None:
    if term.startswith("corr."):
        return correlation([r for t in tasks for r in chosen[(seed, t)]], term)
    # one record per task (the pre-trained model's numbers are the same in every record of a task and seed)
    values = [read_path(metrics_view(chosen[(seed, t)][0]), term) for t in tasks]
    return None if any(v is None for v in values) else float(np.mean(values))
