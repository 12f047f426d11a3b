"""The matched-gain leaderboard of a task with a ``selection`` section: one row per method, at its selected setting.

The rule (``forgetbench.selection``) picks each method's setting from target validation accuracy only; the row then
shows that setting's test numbers over its seeds, the mean ΔLP with its paired bootstrap interval over seeds and test
images (``forgetbench.report.bootstrap``), and its rank as a tie group. Records of other settings (the rest of the
trade-off sweep) are not rows: the trade-off figure shows them.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import SpecError
from ..modes import entry_label
from ..selection import select
from ..tasks import TaskSpec
from .board import Board, Column, build_board, fmt
from .bootstrap import ImageDraws, differences, mean_delta_interval, tie_ranks

INTERVAL = "ΔLP 95% CI"
SHORT = "‡"  # marks a method none of whose settings reached the bar


def selection_task(records: list) -> TaskSpec | None:
    """The task of the records when it states a selection rule, else None."""
    spec = records[0].task.spec
    if not spec.get("selection"):
        return None
    return TaskSpec.from_dict(spec, source=f"the records of task {records[0].task.name!r}")


def rule_text(task: TaskSpec) -> str:
    rule = task.selection
    return (f"Each method at its selected setting: the strongest of its strength grid whose mean target validation "
            f"accuracy (seed {', '.join(map(str, task.seeds[:1]))}) is within {rule.within:g} point(s) of "
            f"`{rule.reference}`'s; test metrics are not read to choose ({SHORT}: no setting reached it, the closest "
            f"is shown, ranked after every method at matched gain). {INTERVAL}: paired bootstrap over seeds and test "
            f"images (percentile, 2,000 draws). Rank: tie groups, the best mean leads and every method whose interval "
            f"overlaps the leader's shares its rank; then the best of the rest, and so on.")


def matched_board(task: str, version: int, records: list, older: str | None, note: str,
                  columns: list[Column]) -> Board:
    """The matched-gain board (module docstring) of one task version's records."""
    spec = selection_task(records)
    chosen = select(spec, records)
    key = lambda params: json.dumps(params, sort_keys=True)  # noqa: E731
    picked = {m: key(s.params) for m, s in chosen.items()}  # by label: a method in each mode is its own row
    rows = [r for r in records if picked.get(entry_label(r.method.name, r.mode)) == key(dict(r.method.params))]
    columns = [columns[0], Column("Val acc", lambda r: r.metrics.target.acc_val, "mean_std", key="acc_val"),
               *columns[1:]]
    board = build_board(task, version, rows, older, f"{note} {rule_text(spec)}", columns, rank_by="ΔLP",
                        required=spec.selection.seeds)
    by_method = {m: [r for r in rows if entry_label(r.method.name, r.mode) == m] for m in chosen}
    try:
        runs = {m: [differences(r) for r in sorted(recs, key=lambda r: r.seed)] for m, recs in by_method.items()}
    except ValueError:  # records from before per-image correctness: no interval, ranks by mean as before
        return board
    sizes = {name: d.size for name, d in next(iter(runs.values()))[0].items()}
    images = ImageDraws(sizes)
    intervals = {m: mean_delta_interval(r, images) for m, r in runs.items()}
    # a method short of the bar is not at matched gain: it ranks after every method that is (its own tie groups)
    matched = {m: iv for m, iv in intervals.items() if chosen[m].matched}
    ranks = tie_ranks(matched)
    ranks.update({m: len(matched) + r for m, r in tie_ranks({m: iv for m, iv in intervals.items()
                                                              if m not in matched}).items()})
    at = board.titles.index("ΔLP") + 1
    board.titles.insert(at, INTERVAL)
    board.keys[INTERVAL] = "delta_lp_ci"
    label = lambda sort: entry_label(sort["Method"], sort["Mode"])  # noqa: E731
    for cells, sort in zip(board.rows, board.sort_keys):
        method = label(sort)
        ci = intervals[method]
        cells[INTERVAL] = f"{fmt(ci.mean, True)} [{fmt(ci.low, True)}, {fmt(ci.high, True)}]"
        sort[INTERVAL] = ci.mean
        cells["Rank"], sort["Rank"] = str(ranks[method]), ranks[method]
        if not chosen[method].matched:
            cells["Method"] = f"{cells['Method']} {SHORT}"
    order = sorted(range(len(board.rows)), key=lambda i: (board.sort_keys[i]["Rank"], -intervals[
        label(board.sort_keys[i])].mean))
    board.rows = [{t: board.rows[i][t] for t in board.titles} for i in order]
    board.sort_keys = [board.sort_keys[i] for i in order]
    return board


def matched_or_none(task: str, version: int, records: list, older: str | None, note: str,
                    columns: list[Column]) -> Board | None:
    """The matched-gain board when the records' task states a selection rule and the sweep has what it needs; else
    None (the caller shows its plain board)."""
    if not records or selection_task(records) is None:
        return None
    try:
        return matched_board(task, version, records, older, note, columns)
    except SpecError:  # no reference run yet, or records that predate validation accuracy
        return None
