"""The trade-off figure of a strength sweep: target accuracy against mean ΔLP, one panel per method.

Each point is one setting (mean over its seeds); a method's points are joined in the order of its knob (its front,
from "as ft" to "barely moves"). Every panel shows, in grey, every other method's points, ``ft``'s grid as a dashed
line, and the pre-trained model's zero-shot and linear-probe accuracy on the target (at ΔLP = 0 by definition), so
that 16 methods stay readable: one method in colour per panel against the same backdrop. The selected setting of a
task with a selection rule is a star. Deterministic output (records sorted, fixed SVG salt).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import matplotlib as mpl
from matplotlib.figure import Figure

from ..errors import SpecError
from ..evaluate.per_image import accuracy
from ..methods import METHODS
from ..modes import entry_label, split_label
from ..sweep import tradeoff_grid
from .board import mean
from .matched import selection_task
from .plots import _RC, _paths, _save

REFERENCE = "ft"


def _settings(records: list) -> dict[str, list[tuple[dict, float, float, int]]]:
    """method label (``ft``, ``ft (lora)``) -> [(params, mean ΔLP, mean target acc, seeds)], in the order of the
    method's knob (weakest first)."""
    groups: dict[tuple[str, str], list] = {}
    for r in sorted(records, key=lambda r: r.run_id):
        if "delta_lp_mean" in r.metrics.summary:
            label = entry_label(r.method.name, r.mode)  # each fine-tuning mode of a method: its own panel
            groups.setdefault((label, json.dumps(dict(r.method.params), sort_keys=True)), []).append(r)
    out: dict[str, list] = {}
    for (method, key), recs in sorted(groups.items()):
        out.setdefault(method, []).append((json.loads(key), mean([r.metrics.summary["delta_lp_mean"] for r in recs]),
                                           mean([r.metrics.target.acc for r in recs]), len(recs)))
    for method, points in out.items():
        strength = _strength(method)
        if strength is not None:
            name, mode = split_label(method)
            grid = tradeoff_grid([name], mode)[f"{name}.{strength.param}"]  # a mode's own lr grid
            order = {v: i for i, v in enumerate(grid)}
            points.sort(key=lambda p: (order.get(p[0].get(strength.param), math.inf), json.dumps(p[0])))
    return out


def _strength(label: str):
    method = split_label(label)[0]
    return METHODS.get(method).strength if method in METHODS else None


def _pretrained(records: list) -> dict[str, float]:
    """The pre-trained model's target accuracies: zero-shot and linear probe where the records keep them."""
    for r in records:
        correct = r.metrics.target.correct or {}
        found = {kind: accuracy(correct[f"{kind}_reference"]) for kind in ("zs", "lp")
                 if f"{kind}_reference" in correct}
        if found:
            return found
    return {"pre-trained": records[0].metrics.target.acc_reference}


def plot_tradeoff(records: Iterable[Any], out_prefix: Path) -> list[Path]:
    """The figure of each task's records (latest version); ``<prefix>.png/.svg``, or ``<prefix>-<task>`` for several
    tasks."""
    records = list(records)
    if not records:
        raise SpecError("no fine-tune records to draw a trade-off figure from")
    tasks = sorted({r.task.name for r in records})
    written = []
    for task in tasks:
        mine = [r for r in records if r.task.name == task]
        latest = max(r.task.version for r in mine)
        mine = [r for r in mine if r.task.version == latest]
        prefix = Path(out_prefix) if len(tasks) == 1 else Path(f"{out_prefix}-{task}")
        written += _draw(task, latest, mine, prefix)
    return written


def _selected(records: list) -> dict[str, dict]:
    spec = selection_task(records)
    if spec is None:
        return {}
    from ..selection import select

    try:
        return {m: s.params for m, s in select(spec, records).items()}
    except SpecError:  # the sweep is not far enough yet
        return {}


def _draw(task: str, version: int, records: list, prefix: Path) -> list[Path]:
    settings = _settings(records)
    if not settings:
        raise SpecError(f"task {task!r}: no record has a mean ΔLP to draw")
    pretrained = _pretrained(records)
    selected = _selected(records)
    # ft, then ft in each fine-tuning mode, then the other methods
    methods = sorted(settings, key=lambda m: (split_label(m)[0] != REFERENCE, m))
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    cmap = mpl.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(3.2 * cols, 2.8 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        every = [(p[1], p[2]) for pts in settings.values() for p in pts]
        for i, method in enumerate(methods):
            ax = axes[i]
            ax.scatter(*zip(*every), s=8, color="0.82", zorder=1)
            if REFERENCE in settings and method != REFERENCE:
                ref = settings[REFERENCE]
                ax.plot([p[1] for p in ref], [p[2] for p in ref], "--", color="0.35", lw=1, zorder=2,
                        label=f"{REFERENCE} (its lr grid)")
            for (kind, acc), marker in zip(sorted(pretrained.items()), ("s", "D", "^")):
                ax.scatter([0.0], [acc], marker=marker, s=28, facecolor="white", edgecolor="black", zorder=4,
                           label=f"pre-trained {kind}")
            pts = settings[method]
            colour = cmap(i % cmap.N)
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "-o", color=colour, ms=4, lw=1.5, zorder=3,
                    label=method)
            if method in selected:
                for p in pts:
                    if p[0] == selected[method]:
                        ax.scatter([p[1]], [p[2]], marker="*", s=140, color=colour, edgecolor="black", zorder=5,
                                   label="selected")
            strength = _strength(method)
            knob = f" ({strength.param}, {len(pts)} settings)" if strength is not None else ""
            ax.set_title(f"{method}{knob}")
            ax.axvline(0.0, color="0.85", lw=0.8, zorder=0)
            ax.grid(True, color="0.93", lw=0.6)
            if i % cols == 0:
                ax.set_ylabel("target accuracy (%)")
            if i >= len(methods) - cols:
                ax.set_xlabel("mean ΔLP (points)")
            if i == 0 or (i == 1 and REFERENCE in settings):
                ax.legend(loc="lower left", fontsize=7, frameon=False)
        for ax in axes[len(methods):]:
            ax.set_visible(False)
        fig.suptitle(f"Trade-off — task {task} (version {version}): target accuracy against forgetting; each "
                     f"point a setting (mean over its seeds)")
        png, svg = _paths(prefix, "png", "svg")
        _save(fig, png, svg)
    return [png, svg]
