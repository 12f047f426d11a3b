"""Figures of forgetting against feature drift: the correlation scatter and the training trajectories.

Uses matplotlib's object API on an Agg canvas (never pyplot), so importing this module changes no global backend
and nothing is ever shown. The same records give byte-identical SVG and PNG files: a fixed ``svg.hashsalt``, no
dates or software stamps in the metadata, and records sorted before drawing.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..atomic import atomic_write
from ..errors import SpecError
from ..evaluate.drift_metrics import DRIFT_METRICS, DriftMetric, drift_metrics
from .correlation import _params_str, correlation_markdown, correlations, points

Y_LABEL = "ΔLP (points, fine-tuned − pre-trained)"
_RC = {"svg.hashsalt": "forgetbench", "svg.fonttype": "path", "font.size": 9, "axes.titlesize": 9}
_DPI = 150


def _paths(out_prefix: Path, *suffixes: str) -> list[Path]:
    """``<prefix>.png`` etc.; appended, not ``with_suffix``, so a prefix such as ``mini.v1`` keeps its dot."""
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    return [out_prefix.parent / f"{out_prefix.name}.{s}" for s in suffixes]


def figure_bytes(fig: Figure) -> tuple[bytes, bytes]:
    """The figure as PNG and SVG bytes, without dates or software stamps (the same figure gives the same bytes)."""
    FigureCanvasAgg(fig)
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=_DPI, metadata={"Software": None})
    fig.savefig(svg, format="svg", metadata={"Date": None})
    return png.getvalue(), svg.getvalue()


def _save(fig: Figure, png: Path, svg: Path) -> None:
    png_bytes, svg_bytes = figure_bytes(fig)
    atomic_write(png, png_bytes)
    atomic_write(svg, svg_bytes)


def _colours(methods: list[str]) -> dict[str, Any]:
    cmap = mpl.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _legend(fig: Figure, colours: dict[str, Any], line: bool) -> None:
    handles = [Line2D([], [], color=c, marker="o", linestyle="-" if line else "none", label=m)
               for m, c in colours.items()]
    fig.legend(handles=handles, title="method", loc="outside lower center", ncols=min(len(handles), 6),
               frameon=False)


def _tasks_title(what: str, tasks: Iterable[str]) -> str:
    tasks = sorted(set(tasks))
    return f"{what} — task{'s' if len(tasks) > 1 else ''}: {', '.join(tasks)}"


def _coef(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{round(x, 2) + 0.0:+.2f}"


def _coef_ci(est: float, lo: float, hi: float) -> str:
    ci = f" [{_coef(lo)}, {_coef(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""
    return _coef(est) + ci


# ---------------------------------------------------------------------------------------------------- scatter

def plot_correlation(records: Iterable[Mapping[str, Any]], out_prefix: Path, per_checkpoint: bool = False,
                     n_boot: int = 2000, seed: int = 0) -> list[Path]:
    """Scatter of each drift metric (x) against ΔLP (y), one panel per drift metric present, coloured by method.

    Panel titles give Pearson r and Spearman ρ with bootstrap 95% CIs; the figure subtitle states the unit of
    correlation. Writes ``<out_prefix>.png``, ``.svg`` and ``.md`` (the coefficient table) and returns their paths.
    Raises SpecError (a ValueError) when there are no held-out points or no drift metric at all.
    """
    df = points(records, per_checkpoint=per_checkpoint)
    if df.empty:
        raise SpecError("plot_correlation: the records have no held-out datasets, so there is nothing to correlate")
    present = [m.name for m in _figure_order() if df[m.name].notna().any() and df["delta_lp"].notna().any()]
    if not present:
        raise SpecError(f"plot_correlation: no record has a drift metric ({', '.join(DRIFT_METRICS.names())}) under "
                        f"metrics.heldout.<dataset>.drift; run a task whose evaluation computes drift")
    table = correlations(df, drifts=present, target="delta_lp", n_boot=n_boot, seed=seed)
    png, svg, md = _paths(out_prefix, "png", "svg", "md")
    methods = sorted(df["method"].unique())
    colours = _colours(methods)
    width = max(6.0, 4.4 * len(present))
    units = list(dict.fromkeys(table["unit"]))
    unit = units[0] if len(units) == 1 else "; ".join(f"{DRIFT_METRICS.get(d).title}: {u}"
                                                      for d, u in zip(table["drift"], table["unit"]))

    with mpl.rc_context(_RC):
        fig = Figure(figsize=(width, 5.0), layout="constrained")
        axes = fig.subplots(1, len(present), sharey=True, squeeze=False)[0]
        for ax, row in zip(axes, table.itertuples(index=False)):
            d = row.drift
            sub = df[df[d].notna() & df["delta_lp"].notna()]
            for m in methods:
                pts = sub[sub["method"] == m]
                fin = pts[pts["final"]]
                ax.scatter(fin[d], fin["delta_lp"], s=22, color=colours[m], alpha=0.85, edgecolors="none")
                cp = pts[~pts["final"]]  # checkpoints: hollow, so the final models stay readable
                if len(cp):
                    ax.scatter(cp[d], cp["delta_lp"], s=16, facecolors="none", edgecolors=[colours[m]],
                               linewidths=0.8, alpha=0.7)
            ax.axhline(0.0, color="0.6", linewidth=0.8, linestyle="--", zorder=0)
            pearson = _coef_ci(row.pearson_r, row.pearson_lo, row.pearson_hi)
            spearman = _coef_ci(row.spearman_rho, row.spearman_lo, row.spearman_hi)
            metric = DRIFT_METRICS.get(d)
            ax.set_title(f"{metric.title} (n = {row.n})\nPearson r = {pearson}\nSpearman ρ = {spearman}")
            ax.set_xlabel("\n".join(textwrap.wrap(metric.description, 40)))
            ax.grid(True, linewidth=0.4, alpha=0.5)
        axes[0].set_ylabel(Y_LABEL)
        note = " Hollow markers: training checkpoints." if per_checkpoint and (~df["final"]).any() else ""
        sub_title = f"Unit of correlation: {unit}. Brackets: bootstrap 95% CI, resampling runs.{note}"
        fig.suptitle(_tasks_title("Forgetting vs feature drift", df["task"]) + "\n"
                     + textwrap.fill(sub_title, int(width * 12)), fontsize=10)
        _legend(fig, colours, line=False)
        _save(fig, png, svg)

    atomic_write(
        md, "# " + _tasks_title("Forgetting vs feature drift", df["task"]) + "\n\n"
        f"Correlation of each held-out feature drift with ΔLP (points, fine-tuned − pre-trained; negative = "
        f"forgetting). Brackets are percentile-bootstrap 95% CIs ({n_boot} resamples of whole runs, seed {seed}: the "
        f"points of one run are not independent). Pooled over held-out datasets, then within each.\n\n"
        + correlation_markdown(correlations(df, drifts=present, target="delta_lp", n_boot=n_boot, seed=seed,
                                            per_dataset=True)) + "\n")
    return [png, svg, md]


# ------------------------------------------------------------------------------------------------ trajectories

def _figure_order() -> list[DriftMetric]:
    return sorted(drift_metrics(), key=lambda m: m.figure_rank)


def _trajectory(rec: Any) -> list[tuple[int, float, dict[str, float]]]:
    """(step, mean ΔLP, mean of each drift) per checkpoint, sorted by step, plus the final model if later."""
    def point(summary: Mapping[str, float]) -> tuple[float, dict[str, float]]:
        return (summary.get("delta_lp_mean", np.nan),
                {m.name: summary.get(m.summary_key, np.nan) for m in drift_metrics()})

    out = {cp.step: point(cp.summary) for cp in rec.trajectory}
    final_step = (rec.training or {}).get("steps")
    if isinstance(final_step, int) and final_step > max(out):  # the finished model ends the line
        out[final_step] = point(rec.metrics.summary)
    return [(k, *out[k]) for k in sorted(out)]


def plot_trajectories(records: Iterable[Any], out_prefix: Path) -> list[Path]:
    """Mean ΔLP against each mean drift along training: one panel per drift metric, one line per run, colour per
    method.

    Uses each record's ``trajectory`` checkpoints (and its final metrics when training ran past the last
    checkpoint); records without a trajectory are ignored. Writes ``<out_prefix>.png`` and ``.svg``.
    Raises SpecError (a ValueError) when no record has a trajectory.
    """
    runs = [((r.task.name, r.method.name, _params_str(r.method.params), r.seed, r.run_id), _trajectory(r))
            for r in records if r.trajectory]
    if not runs:
        raise SpecError("no record has a trajectory; run a task with evaluate.checkpoints > 0")
    runs.sort(key=lambda r: r[0])
    methods = sorted({k[1] for k, _ in runs})
    colours = _colours(methods)
    png, svg = _paths(out_prefix, "png", "svg")
    metrics = [m for m in _figure_order() if any(np.isfinite(t[2][m.name]) for _, traj in runs for t in traj)] \
        or _figure_order()[:1]

    with mpl.rc_context(_RC):
        fig = Figure(figsize=(4.8 * len(metrics), 5.0), layout="constrained")
        axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            for key, traj in runs:
                xy = np.array([(t[2][metric.name], t[1]) for t in traj
                               if np.isfinite(t[2][metric.name]) and np.isfinite(t[1])])
                if len(xy):
                    ax.plot(xy[:, 0], xy[:, 1], color=colours[key[1]], marker="o", markersize=3.5, linewidth=1.2,
                            alpha=0.85)
                    ax.plot(xy[-1:, 0], xy[-1:, 1], color=colours[key[1]], marker="o", markersize=7,
                            linestyle="none")  # the end of training, so the direction of each line is visible
            ax.axhline(0.0, color="0.6", linewidth=0.8, linestyle="--", zorder=0)
            ax.set_xlabel("\n".join(textwrap.wrap(
                "mean " + metric.description.replace("held-out features", "over held-out datasets; features"), 55)))
            ax.set_title(f"ΔLP vs {metric.title} along training")
            ax.grid(True, linewidth=0.4, alpha=0.5)
        axes[0].set_ylabel("mean " + Y_LABEL + "\nover held-out datasets")
        fig.suptitle(_tasks_title("Forgetting along training", (k[0] for k, _ in runs))
                     + f"\none line per run ({len(runs)} runs), markers at evaluated checkpoints, "
                       "large marker at the end of training", fontsize=10)
        _legend(fig, colours, line=True)
        _save(fig, png, svg)
    return [png, svg]
