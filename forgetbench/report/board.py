"""A leaderboard table (``Board``): one row per (method, fine-tuning mode, params), cells aggregated over seeds,
ranked by one column (a Mode column only when a task's records have more than one mode).

Every protocol builds its table here (``build_board``) from its own columns; the Markdown and HTML leaderboards both
render the same boards, so they always show the same data. Cells depend only on the set of records, never on their
order.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

from ..errors import ForgetbenchError, SpecError
from ..methods import METHODS, method_source

FEW_SEEDS = "†"  # marks a row with fewer seeds than its task requires
STALE = "‡"  # marks a row with records made by other code of its method than the method's file holds now
#: The leading columns of every board, with the names they go by in the HTML page's ``#sort=`` links.
LEADING = {"Rank": "rank", "Method": "method", "Mode": "mode", "Params": "params", "Seeds": "seeds"}


@dataclass(frozen=True)
class Column:
    """One column: its title, the per-record value it aggregates (None: the record has none), how the cell shows
    the values of a row's seeds (``mean``, ``mean_signed``, ``mean_std``, ``mean_std_signed``, ``fraction``), and its
    ``#sort=`` name (default: the title, slugged). ``optional`` columns are shown only when some record has a value."""

    title: str
    value: Callable[[Any], float | None]
    style: str = "mean"
    key: str | None = None
    optional: bool = False


@dataclass
class Board:
    """One task's ranked table, as text cells (shown) and sort keys (numbers where the column is numeric)."""

    task: str
    version: int
    note: str
    older: str | None  # "version 1 (6 records)" when older versions exist; they are not ranked
    titles: list[str]
    rows: list[dict[str, str]]
    sort_keys: list[dict[str, float | str]]
    citations: list[tuple[str, str]]  # (method, its citation)
    required_seeds: int | None  # seeds the task file asks for; rows with fewer are marked
    keys: dict[str, str]  # column title -> its ``#sort=`` name, where it is not the slugged title
    stale: list[str] = field(default_factory=list)  # "method (params)" of the rows marked STALE
    unknown_code: int = 0  # records without a method code hash (older than the field)
    n_records: int = 0

    @property
    def few_seeds_note(self) -> str | None:
        if not any(r["Seeds"].endswith(FEW_SEEDS) for r in self.rows):
            return None
        return (f"{FEW_SEEDS} fewer seeds than the task's {self.required_seeds} (its `seeds`; `selection.seeds` for a "
                "selected setting): the mean is less certain and the rank not comparable.")

    @property
    def code_note(self) -> str | None:
        """Which rows are stale (made with other method code than today's), and how many records cannot tell."""
        parts = []
        if self.stale:
            parts.append(f"{STALE} stale: made with other code of the method than its file holds now (the records' "
                         f"`method.source_sha256` differs): {', '.join(self.stale)}; re-run them (`--force`) before "
                         f"comparing them with the rest.")
        if self.unknown_code:
            parts.append(f"{self.unknown_code} of {self.n_records} records carry no method code hash (written before "
                         f"records had one): whether their code is current is unknown.")
        return " ".join(parts) or None


# ------------------------------------------------------------------------------------------------- number helpers

def mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)  # exact sum: independent of record order


def _std(xs: Sequence[float]) -> float:
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def fmt(x: float, signed: bool = False, digits: int = 2) -> str:
    x = round(x, digits) + 0.0  # + 0.0 turns -0.0 into 0.0: no "-0.00"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def cell(values: Sequence[float], style: str) -> str:
    """The cell of a row's values: their mean (signed for Δ, three decimals for a ``fraction``), with the standard
    deviation over seeds (n-1) for the ``mean_std`` styles."""
    if not values:
        return ""
    if style == "fraction":
        return f"{mean(values):.3f}"
    text = fmt(mean(values), style.endswith("signed"))
    if style.startswith("mean_std") and len(values) > 1:
        text += f" ± {fmt(_std(values))}"
    return text


def _param_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))


def format_params(params: dict[str, Any], method: str | None = None) -> str:
    """Compact ``k=v, k=v`` (sorted keys) for a table cell: only the values that differ from ``method``'s registered
    defaults, so that a row reads "defaults" at a glance (a method not registered here shows every value)."""
    defaults = METHODS.get(method).defaults if method and method in METHODS else {}
    shown = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    return ", ".join(f"{k}={_param_value(shown[k])}" for k in sorted(shown)).replace("|", "\\|")


# ------------------------------------------------------------------------------------------------------- boards

def required_seeds(records: list) -> int | None:
    """The most seeds a record's task asks for (its ``seeds``); rows with fewer are marked."""
    counts = [len(r.task.spec["seeds"]) for r in records if isinstance(r.task.spec.get("seeds"), list)]
    return max(counts) if counts else None


@lru_cache(maxsize=None)
def current_source_sha256(method: str) -> str | None:
    """The sha256 of a registered method's source file as it is now; None when it is not registered here."""
    if method not in METHODS:
        return None
    try:
        return method_source(METHODS.get(method)).sha256
    except ForgetbenchError:
        return None


def is_stale(record: Any) -> bool:
    """Made with other code of its method than the method's file holds now (unknown hashes are not stale)."""
    now = current_source_sha256(record.method.name)
    return record.method.source_sha256 is not None and now is not None and record.method.source_sha256 != now


def check_one_weights(task: str, version: int, records: list) -> None:
    """One task version's records must start from the same pre-trained weights: mixed ones are refused."""
    hashes = Counter(r.model.weights_sha256 for r in records if r.model.weights_sha256)
    if len(hashes) > 1:
        found = ", ".join(f"{h[:12]} in {n} records" for h, n in sorted(hashes.items()))
        raise SpecError(f"task {task!r} version {version} mixes records made from different pre-trained weights "
                        f"(model.weights_sha256 {found}); re-run the stale ones (`--force`) or remove them")


def build_board(task: str, version: int, records: list, older: str | None, note: str, columns: list[Column],
                rank_by: str, required: int | None = None) -> Board:
    """Rows per (method, mode, params), cells over seeds, ranked by the mean of column ``rank_by`` (highest first; rows
    without it last; equal means share a rank). Rows with fewer than ``required`` seeds (default: the task's
    ``seeds``) are marked. Records of other pre-trained weights than the rest are refused; rows made with other
    method code than today's are marked ``STALE``."""
    check_one_weights(task, version, records)
    required = required or required_seeds(records)
    groups: dict[tuple[str, str, str], list] = {}
    for rec in records:
        params = format_params(dict(rec.method.params), rec.method.name)
        groups.setdefault((rec.method.name, rec.mode, params), []).append(rec)
    by_mode = len({mode for _, mode, _ in groups}) > 1  # a Mode column only when the records have several
    shown = [c for c in columns if not c.optional or any(c.value(r) is not None for r in records)]
    rows, stale = [], []
    for (method, mode, params), recs in sorted(groups.items()):
        n = len({r.seed for r in recs})
        if any(map(is_stale, recs)):
            stale.append(f"{method} ({params})" if params else method)
        cells: dict[str, Any] = {"Method": f"{method} {STALE}" if any(map(is_stale, recs)) else method,
                                 "Mode": mode, "Params": params,
                                 "Seeds": f"{n} {FEW_SEEDS}" if required is not None and n < required else str(n)}
        sort: dict[str, Any] = {"Method": method, "Mode": mode, "Params": params, "Seeds": n}
        for column in shown:
            # sorted: the cell must not depend on the order records were read in
            values = sorted(float(v) for v in map(column.value, recs) if v is not None)
            cells[column.title] = cell(values, column.style)
            sort[column.title] = mean(values) if values else -math.inf
        rows.append((cells, sort))
    rows.sort(key=lambda r: -r[1][rank_by])  # stable: ties keep the (method, params) order
    rank, prev = 0, None
    for i, (cells, sort) in enumerate(rows, start=1):
        if sort[rank_by] != prev:
            rank, prev = i, sort[rank_by]
        cells["Rank"], sort["Rank"] = str(rank), rank
    leading = [t for t in LEADING if t != "Mode" or by_mode]
    titles = [*leading, *(c.title for c in shown)]
    citations = sorted({(r.method.name, r.method.citation) for r in records if r.method.citation})
    return Board(task=task, version=version, note=note, older=older, titles=titles,
                 rows=[{t: c[t] for t in titles} for c, _ in rows], sort_keys=[s for _, s in rows],
                 citations=citations, required_seeds=required,
                 keys={**LEADING, **{c.title: c.key for c in shown if c.key}}, stale=stale,
                 unknown_code=sum(r.method.source_sha256 is None for r in records), n_records=len(records))
