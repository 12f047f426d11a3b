"""Leaderboard tables of the two protocols beyond one fine-tune: task sequences and absent classes.

Each gives a ``leaderboard.Board``, so the Markdown and HTML leaderboards render it like any other task's table.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from ..results import SEQUENCE_SCHEMA
from .leaderboard import FEW_SEEDS, Board, _cell, _mean, _required_seeds, format_params

# (column title, per-record value, cell style)
Column = tuple[str, Callable[[dict], Any], str]


def _seq(kind: str, key: str) -> Callable[[dict], Any]:
    return lambda rec: rec["metrics"][kind]["summary"].get(key)


def _absent(*path: str) -> Callable[[dict], Any]:
    def get(rec: dict) -> Any:
        cur: Any = rec["metrics"]["absent"]
        for key in path:
            cur = cur.get(key) if isinstance(cur, dict) else None
        return cur
    return get


def _table(task: str, version: int, current: list[dict], older: str | None, note: str, columns: list[Column],
           rank_by: str) -> Board:
    """Rows per (method, params), cells over seeds, ranked by the mean of column ``rank_by`` (highest first)."""
    required = _required_seeds(current)
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in current:
        groups.setdefault((rec["method"]["name"], format_params(rec["method"]["params"], rec["method"]["name"])), []).append(rec)
    rows = []
    for (method, params), recs in sorted(groups.items()):
        n = len({r["seed"] for r in recs})
        cells: dict[str, Any] = {"Method": method, "Params": params,
                                 "Seeds": f"{n} {FEW_SEEDS}" if required is not None and n < required else str(n)}
        sort: dict[str, Any] = {"Method": method, "Params": params, "Seeds": n}
        for title, value, style in columns:
            values = sorted(float(v) for v in map(value, recs) if isinstance(v, (int, float)))
            cells[title] = _cell(values, style)
            sort[title] = _mean(values) if values else -math.inf
        rows.append((cells, sort))
    rows.sort(key=lambda r: -r[1][rank_by])  # stable: ties keep the (method, params) order
    rank, prev = 0, None
    for i, (cells, sort) in enumerate(rows, start=1):
        if sort[rank_by] != prev:
            rank, prev = i, sort[rank_by]
        cells["Rank"], sort["Rank"] = str(rank), rank
    titles = ["Rank", "Method", "Params", "Seeds"] + [t for t, _, _ in columns]
    refs = sorted({(r["method"]["name"], r["method"].get("reference")) for r in current if r["method"].get("reference")})
    return Board(task=task, version=version, note=note, older=older, titles=titles,
                 rows=[{t: c[t] for t in titles} for c, _ in rows], sort_keys=[s for _, s in rows],
                 references=refs, required_seeds=required)


def _fmt(x: float) -> str:
    return f"{round(x, 1) + 0.0:.1f}"


def sequence_board(task: str, version: int, current: list[dict], older: str | None) -> Board:
    first = current[0]["sequence"]
    kinds = [k for k in first["accuracy"] if all(k in r["metrics"] for r in current)]
    kind = kinds[0]
    name = {"zs": "zero-shot", "lp": "linear-probe"}[kind]
    steps = ", ".join(f"`{s['name']}`" for s in first["steps"])
    heldout = ", ".join(f"`{h}`" for h in first["heldout"])
    ref = current[0]["metrics"][kind]
    note = (f"Sequence of {len(first['steps'])} fine-tunes: {steps}; each step regularised towards the "
            f"{first['reference']} model. R is filled with {name} accuracy (pre-trained: "
            f"{', '.join(_fmt(x) for x in ref['reference'])})"
            + (f"; held out: {heldout} (pre-trained {', '.join(_fmt(x) for x in ref['heldout_reference'])})"
               if heldout else "")
            + ". Avg, Last, Transfer as in MTIL; BWT, FWT (against the pre-trained model), forgetting (Chaudhry); "
            "Held-out Δ: accuracy on the held-out datasets after the last step minus before the first. "
            "Rows are ranked by Avg.")
    if len(kinds) > 1:
        note += " The records also hold the matrices filled with " + ", ".join(kinds[1:]) + " accuracy."
    columns: list[Column] = [("Avg", _seq(kind, "avg"), "mean_std"), ("Last", _seq(kind, "last"), "mean_std"),
                             ("Transfer", _seq(kind, "transfer"), "mean_std"), ("BWT", _seq(kind, "bwt"), "mean_signed"),
                             ("FWT", _seq(kind, "fwt"), "mean_signed"),
                             ("Forgetting", _seq(kind, "forgetting"), "mean_std")]
    if heldout:
        columns += [("Held-out Δ", _seq(kind, "heldout_delta_mean"), "mean_std_signed"),
                    ("Worst held-out Δ", _seq(kind, "heldout_delta_worst"), "mean_signed")]
    return _table(task, version, current, older, note, columns, "Avg")


def absent_board(task: str, version: int, current: list[dict], older: str | None) -> Board:
    first = current[0]["metrics"]["absent"]
    ref = first["reference"]
    pre = (f"pre-trained zero-shot head: seen/all {_fmt(ref['acc']['seen_all'])}, absent/all "
           f"{_fmt(ref['acc']['absent_all'])}, AUSUC {ref['ausuc']:.3f}; " if "acc" in ref else "")
    note = (f"Fine-tune on the seen classes {', '.join(f'`{c}`' for c in first['seen_classes'])} of "
            f"`{current[0]['metrics']['target']['dataset']}`, evaluate over all its classes. Seen/all, absent/all, "
            f"all/all: test samples of that group, predicted among every class; \"cal.\": after adding the average "
            f"logit gap (from training data) to the absent classes' logits. AUSUC: area under the seen/all vs "
            f"absent/all curve as that bias is swept (0..1). NCM: nearest class mean of the features, over every "
            f"class ({pre}pre-trained NCM absent/all {_fmt(ref['ncm']['absent_all'])}). Rows are ranked by AUSUC.")
    columns: list[Column] = [("Seen/all", _absent("acc", "seen_all"), "mean_std"),
                             ("Absent/all", _absent("acc", "absent_all"), "mean_std"),
                             ("All/all", _absent("acc", "all_all"), "mean_std"),
                             ("Absent/all cal.", _absent("calibrated", "absent_all"), "mean_std"),
                             ("All/all cal.", _absent("calibrated", "all_all"), "mean_std"),
                             ("AUSUC", _absent("ausuc"), "mean"),
                             ("NCM absent/all", _absent("ncm", "absent_all"), "mean_std")]
    board = _table(task, version, current, older, note, columns, "AUSUC")
    for row, sort in zip(board.rows, board.sort_keys):  # AUSUC is a fraction: three decimals, not two
        row["AUSUC"] = f"{sort['AUSUC']:.3f}" if math.isfinite(sort["AUSUC"]) else ""
    return board


def special_board(task: str, version: int, current: list[dict], older: str | None) -> Board | None:
    """The table of a sequence or absent-class task; None for a plain fine-tune task."""
    if all(r.get("schema") == SEQUENCE_SCHEMA for r in current):
        return sequence_board(task, version, current, older)
    if all("absent" in r["metrics"] for r in current):
        return absent_board(task, version, current, older)
    return None
