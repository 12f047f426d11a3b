"""The figure of the absent-class protocol: accuracies before and after calibration, per method.

Same conventions as ``plots.py``: matplotlib's object API on an Agg canvas, deterministic bytes, records sorted first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..errors import SpecError
from .plots import _RC, _paths, _save, _tasks_title
from .sequence_plots import grouped

ABSENT_BARS = [("acc", "seen_all", "seen/all"), ("calibrated", "seen_all", "seen/all, calibrated"),
               ("acc", "absent_all", "absent/all"), ("calibrated", "absent_all", "absent/all, calibrated"),
               ("acc", "all_all", "all/all"), ("calibrated", "all_all", "all/all, calibrated")]


def plot_absent(records: Iterable[Any], out_prefix: Path) -> list[Path]:
    """Grouped bars per method (and the pre-trained zero-shot head): seen/all, absent/all and all/all, each before
    and after the average-logit-gap calibration; error bars = min..max over seeds; AUSUC in the labels.
    PNG + SVG."""
    groups, recs = grouped(records)
    if not recs:
        raise SpecError("no absent-class records (metrics.absent); run a task with finetune.seen_classes first")
    blocks = {"pre-trained (zero-shot)": [r.metrics.absent.reference for r in recs[:1]]}
    if blocks["pre-trained (zero-shot)"][0].acc is None:
        blocks = {}  # no text tower: no pre-trained classifier over every class
    blocks.update({label: [r.metrics.absent for r in rs] for label, rs in groups.items()})
    png, svg = _paths(out_prefix, "png", "svg")
    pairs = mpl.colormaps["tab20"]  # dark / light pairs: before / after calibration share a hue
    colours = {name: pairs(i) for i, (_, _, name) in enumerate(ABSENT_BARS)}
    width = 0.8 / len(ABSENT_BARS)
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(max(6.4, 1.3 * len(blocks) + 2), 4.8), layout="constrained")
        ax = fig.subplots()
        for b, (section, key, name) in enumerate(ABSENT_BARS):
            vals = [np.array([getattr(m, section)[key] for m in ms]) for ms in blocks.values()]
            mean = np.array([v.mean() for v in vals])
            err = np.array([[m - v.min() for m, v in zip(mean, vals)], [v.max() - m for m, v in zip(mean, vals)]])
            err = np.clip(err, 0, None)  # equal seeds: the mean can exceed the max by rounding, and matplotlib refuses
            ax.bar(np.arange(len(blocks)) + (b - (len(ABSENT_BARS) - 1) / 2) * width, mean, width,
                   color=colours[name], yerr=err, capsize=2, error_kw={"linewidth": 0.8})
        labels = [f"{label}\nAUSUC {np.mean([m.ausuc for m in ms]):.3f}" for label, ms in blocks.items()]
        ax.set_xticks(np.arange(len(blocks)), labels, fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, axis="y", linewidth=0.4, alpha=0.5)
        seen = recs[0].metrics.absent.seen_classes
        fig.suptitle(_tasks_title("Absent classes: accuracy before and after calibration", (r.task.name for r in recs))
                     + f"\nseen classes: {', '.join(seen)}; bars: mean over seeds, whiskers: min to max", fontsize=10)
        fig.legend(handles=[Patch(color=c, label=name) for name, c in colours.items()], loc="outside lower center",
                   ncols=3, frameon=False)
        _save(fig, png, svg)
    return [png, svg]
