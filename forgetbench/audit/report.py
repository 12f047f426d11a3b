"""The audit report: ``report.md``, a self-contained ``report.html``, ``audit.json`` and two figures."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from tabulate import tabulate

from ..atomic import staged_writes
from ..evaluate.drift_metrics import drift_metrics
from ..report.html import _inline_md, esc, page, png_img, table
from ..report.plots import _RC, figure_bytes


def _f(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = round(float(x), 2) + 0.0
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _drifts(result: Mapping) -> list:
    """The registered drift metrics the audit measured."""
    return [m for m in drift_metrics() if any(m.name in h.get("drift", {}) for h in result["heldout"].values())]


def _dataset_rows(result: Mapping) -> tuple[list[str], list[dict[str, str]], list[dict[str, Any]]]:
    drifts = _drifts(result)
    has_zs = any("zs" in m for m in result["heldout"].values())
    titles = ["Dataset", "LP reference", "LP tuned", "ΔLP"]
    titles += ["ZS reference", "ZS tuned", "ΔZS"] if has_zs else []
    titles += [m.column for m in drifts]
    rows, keys = [], []
    for name in sorted(result["heldout"]):
        m = result["heldout"][name]
        vals = {"Dataset": name, "LP reference": m["lp_reference"], "LP tuned": m["lp"], "ΔLP": m["delta_lp"]}
        if has_zs:
            vals.update({"ZS reference": m.get("zs_reference"), "ZS tuned": m.get("zs"), "ΔZS": m.get("delta_zs")})
        vals.update({d.column: m.get("drift", {}).get(d.name) for d in drifts})
        rows.append({t: (v if t == "Dataset" else _f(v, t.startswith("Δ"))) for t, v in vals.items()})
        keys.append({t: (v if v is not None else -math.inf) for t, v in vals.items()})
    s = result["summary"]
    mean = {"Dataset": "mean", "ΔLP": _f(s.get("delta_lp_mean"), True)}
    if has_zs:
        mean["ΔZS"] = _f(s.get("delta_zs_mean"), True)
    mean.update({d.column: _f(s.get(d.summary_key)) for d in drifts})
    rows.append({t: mean.get(t, "") for t in titles})
    keys.append({})
    return titles, rows, keys


def _concept_rows(result: Mapping, k: int = 10) -> tuple[list[str], list[dict[str, str]]]:
    """The ``k`` classes hit hardest: those whose zero-shot accuracy fell most (only those that fell), or without a
    text tower those whose features moved most."""
    concepts = [c for c in result["concepts"] if c["measure"] != "zero-shot accuracy %" or c["delta"] < 0][:k]
    if not concepts:
        return [], []
    if concepts[0]["measure"].startswith("zero-shot"):
        titles = ["Dataset", "Concept", "ZS reference %", "ZS tuned %", "Δ", "Test samples"]
        rows = [{"Dataset": c["dataset"], "Concept": c["concept"], "ZS reference %": _f(c["reference"]),
                 "ZS tuned %": _f(c["tuned"]), "Δ": _f(c["delta"], True), "Test samples": str(c["samples"])}
                for c in concepts]
    else:
        titles = ["Dataset", "Concept", "L2 drift", "Test samples"]
        rows = [{"Dataset": c["dataset"], "Concept": c["concept"], "L2 drift": f"{c['tuned']:.3f}",
                 "Test samples": str(c["samples"])} for c in concepts]
    return titles, rows


def _md_table(titles: list[str], rows: list[dict[str, str]], text_columns: int) -> str:
    return tabulate([[r.get(t, "") for t in titles] for r in rows], headers=titles, tablefmt="github",
                    disable_numparse=True,
                    colalign=["left"] * text_columns + ["right"] * (len(titles) - text_columns))


def _plots(result: Mapping) -> dict[str, bytes]:
    """Per-dataset bars: ΔLP and ΔZS; the feature drifts. PNG and SVG each, by file name."""
    names = sorted(result["heldout"])
    heldout = result["heldout"]
    files: dict[str, bytes] = {}

    def bars(series, ylabel: str, title: str, stem: str, zero_line: bool) -> None:
        """One grouped bar chart: a bar per (dataset, series), ``series`` = [(legend label, value of a dataset)]."""
        fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.6), layout="constrained")
        ax = fig.subplots()
        x, width = np.arange(len(names)), 0.8 / len(series)
        for i, (label, value) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, [value(heldout[n]) for n in names], width, label=label)
        if zero_line:
            ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(frameon=False)
        files[f"{stem}.png"], files[f"{stem}.svg"] = figure_bytes(fig)

    with mpl.rc_context(_RC):
        has_zs = any("delta_zs" in heldout[n] for n in names)
        deltas = [("ΔLP", "delta_lp")] + ([("ΔZS", "delta_zs")] if has_zs else [])
        bars([(label, lambda m, k=key: m.get(k, np.nan)) for label, key in deltas], "points (tuned − reference)",
             "Accuracy change per held-out dataset (negative = forgotten)", "audit-deltas", zero_line=True)
        drifts = _drifts(result)
        if drifts:
            bars([(m.title, lambda h, d=m.name: h.get("drift", {}).get(d, np.nan)) for m in drifts], "distance",
                 "Feature drift per held-out dataset", "audit-drift", zero_line=False)
    return files


def _context_lines(result: Mapping) -> list[str]:
    suite, tuned, ref = result["suite"], result["tuned"], result["reference"]
    lp = suite["linear_probe"]
    lines = [
        f"- Reference: `{ref['model']}` (weights sha256 `{ref['weights_sha256'][:16]}…`).",
        f"- Tuned: `{tuned['file']}` ({tuned['format']}, image-encoder keys under prefix "
        f"`{tuned['prefix'] or '(none)'}`, {tuned['ignored_tensors']} other tensors ignored; weights sha256 "
        f"`{tuned['weights_sha256'][:16]}…`).",
        f"- Suite `{suite['name']}`: {len(suite['datasets'])} dataset{'s' if len(suite['datasets']) != 1 else ''}; linear probe on L2-normalised features, C from "
        f"{lp['C_grid']} by validation accuracy, refit on {suite['splits'][0]} + {suite['splits'][1]}, scored on "
        f"{suite['splits'][2]}" + ("; zero-shot through the reference's frozen text tower" if ref["has_text"]
                                    and suite["zero_shot"] else "")
        + (f"; drift: {', '.join(suite['drift'])}" if suite["drift"] else "") + f"; seed {result['seed']}.",
        f"- Weight drift (relative L2 change of the encoder's weights): {result['summary']['weight_drift']:.4f}.",
    ]
    if tuned.get("metadata", {}).get("run_id"):
        md = tuned["metadata"]
        lines.append(f"- The weights file says it comes from forgetbench run `{md['run_id']}` (task `{md.get('task')}`,"
                     f" method `{md.get('method')}`, seed {md.get('seed')}).")
    return lines


_READING = ("ΔLP is the change in linear-probe accuracy (points) of the tuned encoder against the reference on each "
            "held-out dataset; ΔZS the same for zero-shot accuracy. Negative means forgotten. L2 drift is the mean "
            "squared distance between the normalised features of the same images; OTDD a distance between the "
            "labelled feature distributions; kernel drift a CKA-like distance between their similarity structures.")


def report_markdown(result: Mapping) -> str:
    titles, rows, _ = _dataset_rows(result)
    ctitles, crows = _concept_rows(result)
    parts = [f"# Forgetting audit: `{Path(result['tuned']['file']).name}` against `{result['reference']['model']}`",
             "", f"**{result['summary_line']}**", "", *_context_lines(result), "", "## Per held-out dataset", "",
             _md_table(titles, rows, 1), "", "![accuracy change per dataset](audit-deltas.png)", ""]
    if any("drift" in m for m in result["heldout"].values()):
        parts += ["![feature drift per dataset](audit-drift.png)", ""]
    parts += ["## Worst-hit concepts", ""]
    if crows:
        what = ("zero-shot accuracy per class, largest drop first" if ctitles[2].startswith("ZS") else
                "largest feature drift first (no text tower, so no per-class accuracy)")
        parts += [f"The {len(crows)} class{'es' if len(crows) > 1 else ''} hit hardest ({what}).", "",
                  _md_table(ctitles, crows, 2), ""]
    else:
        parts += ["No class lost zero-shot accuracy.", ""]
    parts += ["## How to read this", "", _READING, ""]
    return "\n".join(parts)


def report_html(result: Mapping, images: Mapping[str, bytes]) -> str:
    titles, rows, keys = _dataset_rows(result)
    ctitles, crows = _concept_rows(result)
    numeric = set(titles[1:]) | set(ctitles[2:])
    body = [f"<h1>Forgetting audit: <code>{esc(Path(result['tuned']['file']).name)}</code> against "
            f"<code>{esc(result['reference']['model'])}</code></h1>",
            f'<p class="summary">{esc(result["summary_line"])}</p>',
            "<ul>" + "".join(f"<li>{_inline_md(line[2:])}</li>" for line in _context_lines(result)) + "</ul>",
            "<h2>Per held-out dataset</h2>",
            table(titles, rows[:-1], keys[:-1], numeric=numeric, table_id="datasets", footer=rows[-1:])]  # mean last
    body += [f"<figure>{png_img(data, name)}</figure>" for name, data in images.items()]
    body.append("<h2>Worst-hit concepts</h2>")
    body.append(table(ctitles, crows, numeric=numeric, table_id="concepts") if crows else
                "<p>No class lost zero-shot accuracy.</p>")
    body += ["<h2>How to read this</h2>", f"<p>{esc(_READING)}</p>"]
    return page(f"forgetbench audit: {Path(result['tuned']['file']).name}", "\n".join(body))


def write_report(result: Mapping, out_dir: str | Path) -> list[Path]:
    """``report.md``, ``report.html`` (self-contained), ``audit.json`` and the plots, in ``out_dir``.

    Everything is rendered first and then written, each file atomically: an error leaves no half-written report.
    """
    out = Path(out_dir)
    plots = _plots(result)
    files = {"report.md": report_markdown(result),
             "report.html": report_html(result, {n: b for n, b in plots.items() if n.endswith(".png")}),
             "audit.json": json.dumps(result, indent=1, sort_keys=True, allow_nan=False) + "\n", **plots}
    with staged_writes() as stage:
        for name, content in files.items():
            stage(out / name, content)
    return [out / name for name in files]
