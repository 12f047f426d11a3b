"""Figures of the sequence protocol: the accuracy matrix R per method and held-out accuracy over the steps.

Same conventions as ``plots.py``: matplotlib's object API on an Agg canvas, deterministic bytes, records sorted first.
Values are means over seeds (runs of one method with different parameters are kept apart by a params label).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from ..errors import SpecError
from .correlation import _params_str
from .plots import _RC, _colours, _legend, _paths, _save, _tasks_title

KIND_NAMES = {"zs": "zero-shot", "lp": "linear-probe"}


def _label(rec: Any, with_params: bool) -> str:
    params = _params_str(rec.method.params)
    return f"{rec.method.name} ({params})" if with_params and params else rec.method.name


def grouped(records: Iterable[Any]) -> tuple[dict[str, list], list]:
    """Records by method label (params shown when one method has several), sorted."""
    recs = sorted(records, key=lambda r: (r.task.name, r.method.name, _params_str(r.method.params), r.seed))
    variants: dict[str, set] = {}
    for r in recs:
        variants.setdefault(r.method.name, set()).add(_params_str(r.method.params))
    groups: dict[str, list] = {}
    for r in recs:
        groups.setdefault(_label(r, len(variants[r.method.name]) > 1), []).append(r)
    return groups, recs


def _sequence_records(records, kind: str | None) -> tuple[dict[str, list], str]:
    groups, recs = grouped(records)
    if not recs:
        raise SpecError("no sequence records (forgetbench.sequence/1); run a task with a sequence section first")
    layouts = {(tuple(s.name for s in r.sequence.steps), tuple(r.sequence.heldout)) for r in recs}
    if len(layouts) > 1:
        raise SpecError(f"the sequence records have {len(layouts)} different step/held-out layouts; plot one task "
                        f"at a time (--task)")
    kinds = [k for k in recs[0].sequence.accuracy if all(getattr(r.metrics, k) is not None for r in recs)]
    if kind is None:
        kind = kinds[0] if kinds else None
    if kind not in kinds:
        raise SpecError(f"accuracy {kind!r} is not in every sequence record (they have: {', '.join(kinds) or 'none'})")
    return groups, kind


def plot_sequence_matrices(records: Iterable[Any], out_prefix: Path, kind: str | None = None) -> list[Path]:
    """One heat-map per method: rows = the pre-trained model, then after each step; columns = the steps' datasets,
    then the held-out ones (right of the white line). Cells are mean accuracies over seeds. PNG + SVG."""
    groups, kind = _sequence_records(records, kind)
    first = next(iter(groups.values()))[0]
    steps = [s.name for s in first.sequence.steps]
    heldout = list(first.sequence.heldout)
    T, K = len(steps), len(heldout)
    rows = ["pre-trained"] + [f"after {i + 1}: {s}" for i, s in enumerate(steps)]
    png, svg = _paths(out_prefix, "png", "svg")
    n = len(groups)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    cell = 0.55 + 0.04 * max(0, 8 - (T + K))
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(ncols * (1.6 + cell * (T + K)), nrows * (1.4 + cell * (T + 1))), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        image = None
        for ax, (label, recs) in zip(axes, groups.items()):
            m = [getattr(r.metrics, kind) for r in recs]
            top = np.mean([list(x.reference) + list(x.heldout_reference) for x in m], axis=0)
            body = np.mean([np.hstack([np.array(x.R), np.array(x.heldout).reshape(T, K)]) for x in m], axis=0)
            grid = np.vstack([top, body])
            image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
            if K:
                ax.axvline(T - 0.5, color="white", linewidth=2)
            ax.axhline(0.5, color="white", linewidth=1)
            ax.set_xticks(range(T + K), steps + heldout, rotation=40, ha="right")
            ax.set_yticks(range(T + 1), rows if ax.get_subplotspec().is_first_col() else [""] * (T + 1))
            ax.set_title(f"{label} ({len(recs)} seed{'s' if len(recs) > 1 else ''})")
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.colorbar(image, ax=list(axes[:n]), shrink=0.8, label=f"{KIND_NAMES[kind]} accuracy (%)")
        fig.suptitle(_tasks_title(f"Accuracy matrix R after each step ({KIND_NAMES[kind]})",
                                  (r.task.name for rs in groups.values() for r in rs)), fontsize=10)
        _save(fig, png, svg)
    return [png, svg]


def plot_sequence_heldout(records: Iterable[Any], out_prefix: Path, kind: str | None = None) -> list[Path]:
    """Mean accuracy over the held-out datasets against the step (0 = pre-trained), one line per method: mean over
    seeds, band = min..max over seeds. PNG + SVG."""
    groups, kind = _sequence_records(records, kind)
    first = next(iter(groups.values()))[0]
    heldout = first.sequence.heldout
    if not heldout:
        raise SpecError("the sequence has no held-out datasets (evaluate.datasets), so there is no held-out accuracy "
                        "to plot")
    steps = [s.name for s in first.sequence.steps]
    colours = _colours(list(groups))
    png, svg = _paths(out_prefix, "png", "svg")
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(7.2, 4.6), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(steps) + 1)
        for label, recs in groups.items():
            curves = np.array([[np.mean(getattr(r.metrics, kind).heldout_reference)]
                               + [float(np.mean(row)) for row in getattr(r.metrics, kind).heldout] for r in recs])
            ax.plot(x, curves.mean(0), color=colours[label], marker="o", markersize=4, linewidth=1.4)
            if len(recs) > 1:
                ax.fill_between(x, curves.min(0), curves.max(0), color=colours[label], alpha=0.15, linewidth=0)
        ax.set_xticks(x, ["pre-trained"] + [f"{i + 1}: {s}" for i, s in enumerate(steps)], rotation=30, ha="right")
        ax.set_xlabel("after step")
        ax.set_ylabel(f"mean {KIND_NAMES[kind]} accuracy (%) over\n{', '.join(heldout)}")
        ax.grid(True, linewidth=0.4, alpha=0.5)
        fig.suptitle(_tasks_title("Held-out accuracy along the sequence",
                                  (r.task.name for rs in groups.values() for r in rs))
                     + "\nline: mean over seeds; band: min to max over seeds", fontsize=10)
        _legend(fig, colours, line=True)
        _save(fig, png, svg)
    return [png, svg]
