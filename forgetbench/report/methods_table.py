"""The table of every registered method (``forgetbench ls methods --markdown``), which the README embeds."""
from __future__ import annotations

from tabulate import tabulate

from ..methods import METHODS, Param


def _accepts(p: Param) -> str:
    """What a hyper-parameter takes, in a few characters: a range, the choices, or nothing for a flag."""
    if p.choices is not None:
        return "one of " + " / ".join(p.choices)
    words = p.check.what
    for prefix in ("an integer ", "a number "):
        if words.startswith(prefix):
            return words[len(prefix):]
    return ""


def _cell(text: str) -> str:  # a bare "|" would end the Markdown cell
    return text.replace("|", "\\|")


def methods_markdown(names: list[str] | None = None) -> str:
    """One row per method (default: every registered one): its name, what it does, its citation, each
    hyper-parameter with its default and the values it accepts, and its strength knob's grid."""
    rows = []
    for name in METHODS.names() if names is None else names:
        cls = METHODS.get(name)
        params = ", ".join(f"{k}={p.default}" + (f" ({_accepts(p)})" if _accepts(p) else "")
                           for k, p in cls.hyperparameters.items())
        knob = cls.strength.describe() if cls.strength is not None else "–"
        rows.append([f"`{name}`", _cell(cls.description), _cell(cls.citation), _cell(params) or "–", _cell(knob)])
    return tabulate(rows, headers=["method", "what it does", "citation", "hyper-parameters: default (accepted)",
                                   "trade-off grid (`sweep --tradeoff`)"], tablefmt="github")
