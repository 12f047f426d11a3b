"""Published against measured, cell by cell: the rows of one entry's ledger, and their Markdown and HTML forms."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from scipy import stats

from ..tasks import PaperTarget, load_task
from .entries import Entry, entry
from .measures import per_seed


@dataclass(frozen=True)
class Interval:
    """The mean over seeds and its 95% interval (None with one seed)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int

    @property
    def half_width(self) -> float:
        return 0.0 if self.lo is None else (self.hi - self.lo) / 2


def seed_interval(values: Sequence[float]) -> Interval:
    """Student-t 95% interval of the mean over seeds. The one place the ledger's intervals come from: a bootstrap
    (the leaderboard's, once it has one) can replace it here."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, None, None, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class LedgerRow:
    """One published number (or stated direction) and what was measured for it."""

    target: PaperTarget
    tasks: tuple[str, ...]  # the tasks it is measured on (a mean over them)
    measured: Interval | None
    verdict: str

    @property
    def difference(self) -> float | None:
        if self.measured is None or self.target.value is None:
            return None
        return self.measured.mean - self.target.value


def targets_of(e: Entry) -> list[tuple[PaperTarget, tuple[str, ...]]]:
    """Each distinct target of the entry (of its paper entry, for a mini analogue) and the tasks it is measured on."""
    paper = entry(e.analogue_of) if e.is_mini else e
    found: dict[PaperTarget, list[str]] = {}
    for name in paper.tasks:
        for t in load_task(name).targets or ():
            found.setdefault(t, []).append(name)
    return [(t, e.tasks if e.is_mini else tuple(names)) for t, names in found.items()]


def verdict(e: Entry, target: PaperTarget, measured: Interval | None, why_missing: str) -> str:
    if measured is None:
        return why_missing
    if target.claim is not None:
        sign = 1 if target.claim == "> 0" else -1
        if sign * measured.mean <= 0:
            return f"direction does not hold ({target.claim})"
        significant = measured.lo is not None and sign * measured.lo > 0 and sign * measured.hi > 0
        return f"direction holds ({target.claim})" + ("" if significant else ", interval includes 0")
    if target.value is None:
        return "no published number"
    if e.is_mini:
        return "analogue: not compared"
    return "within tolerance" if abs(measured.mean - target.value) <= e.tolerance + measured.half_width \
        else "outside tolerance"


def ledger_rows(e: Entry, records: Iterable[Any]) -> list[LedgerRow]:
    """The entry's ledger from ``records`` (any tasks; those of older task versions are left out)."""
    versions = {name: load_task(name).version for name in e.tasks}
    current = [r for r in records if versions.get(r.task.name) == r.task.version]
    rows = []
    for target, tasks in targets_of(e):
        values = per_seed(current, tasks, target.method, target.metric)
        measured = seed_interval([values[s] for s in sorted(values)]) if values else None
        rows.append(LedgerRow(target, tasks, measured, verdict(e, target, measured, _why_missing(e, target, tasks,
                                                                                                 current))))
    return rows


def _why_missing(e: Entry, target: PaperTarget, tasks: tuple[str, ...], records: list) -> str:
    method = target.method
    if method is not None and any(method not in load_task(t).methods for t in tasks):
        return f"not run: {method} is not among the task's methods"
    have = {r.task.name for r in records if method is None or r.method.name == method}
    if not have:
        return "not run yet"
    if len(have) < len(tasks):
        return f"incomplete: {len(have)} of {len(tasks)} tasks recorded"
    return "not measured: the records lack this metric"


# --------------------------------------------------------------------------------------------------- rendering

def _num(x: float | None, signed: bool = False, digits: int = 2) -> str:
    if x is None:
        return "—"
    return f"{round(x, digits) + 0.0:{'+' if signed else ''}.{digits}f}"  # + 0.0: no "-0.00"


def _published(t: PaperTarget) -> str:
    if t.value is not None:
        return _num(t.value)
    return f"none found (claim {t.claim})" if t.claim else "none found"


def _measured(m: Interval | None, digits: int) -> str:
    if m is None:
        return "—"
    ci = f" [{_num(m.lo, digits=digits)}, {_num(m.hi, digits=digits)}]" if m.lo is not None else ""
    return f"{_num(m.mean, digits=digits)}{ci} (n={m.n})"


HEADERS = ("table / figure", "row", "method", "metric", "published", "measured [95% CI] (seeds)", "difference",
           "verdict", "source")


def cells(row: LedgerRow) -> list[str]:
    t = row.target
    digits = 3 if "corr." in t.metric else 2  # correlations are in [-1, 1]; accuracies in points
    return [t.table, t.row, t.method or "pre-trained / all", t.metric, _published(t), _measured(row.measured, digits),
            "n/a (analogue)" if row.verdict.startswith("analogue") else _num(row.difference, signed=True, digits=digits),
            row.verdict, t.source + (f" ({t.note})" if t.note else "")]


def header_lines(e: Entry, results: str) -> list[str]:
    paper = entry(e.analogue_of) if e.is_mini else e
    lines = [f"**{e.title}**" + (f", the mini-world analogue of {paper.title}" if e.is_mini else ""),
             f"Command: `forgetbench reproduce {e.name} --results {results}` (runs {len(e.tasks)} task(s): "
             f"{', '.join(e.tasks)}; recorded runs are skipped).",
             f"Verdict: {e.tolerance_rule()}. Intervals: Student-t 95% over seeds (one seed: no interval); a value "
             f"over several tasks is their mean per seed."]
    if e.is_mini:
        lines.append("The measured column is an ANALOGUE in the mini world (mini CLIP, procedural images), not a "
                     "reproduction: published numbers are the paper's, shown for orientation.")
    if e.figure:
        lines.append(f"Figure: `forgetbench plot {e.figure} --results {results} "
                     f"{' '.join('--task ' + t for t in e.tasks)} --out {results}/ledger/{e.name}-{e.figure}` "
                     f"(`reproduce` draws it)")
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(e: Entry, rows: list[LedgerRow], results: str = "results") -> str:
    out = [f"## Reproduction ledger: `{e.name}`", ""]
    for line in header_lines(e, results):
        out += [line, ""]
    out.append("| " + " | ".join(HEADERS) + " |")
    out.append("|" + " --- |" * len(HEADERS))
    out += ["| " + " | ".join(_md_cell(c) for c in cells(r)) + " |" for r in rows]
    return "\n".join(out) + "\n"


def render_html(ledgers: list[tuple[Entry, list[LedgerRow]]], results: str = "results") -> str:
    """The HTML page's "Reproduction ledger" section: one table per entry that has records."""
    from ..report.html import _inline_md, _slug, esc, table
    if not ledgers:
        return ""
    body = ['<h2 id="reproduction-ledger">Reproduction ledger</h2>']
    for e, rows in ledgers:
        body.append(f'<h3 id="ledger-{esc(_slug(e.name))}">{esc(e.name)}</h3>')
        body += [f'<p class="note">{_inline_md(line)}</p>' for line in header_lines(e, results)]
        body.append(table(HEADERS, [dict(zip(HEADERS, cells(r))) for r in rows]))
    return "\n".join(body)


def ledgers_with_records(records: list, entries: Iterable[Entry]) -> list[tuple[Entry, list[LedgerRow]]]:
    """The ledgers of the entries of which ``records`` hold at least one current run."""
    names = {r.task.name for r in records}
    return [(e, ledger_rows(e, records)) for e in entries if names & set(e.tasks)]
