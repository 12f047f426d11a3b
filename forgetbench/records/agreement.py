"""When two records of one run agree: the reproducibility tolerance, stated once.

A run (task, version, method, resolved params, seed) run twice by the same code gives the same numbers only up to
floating-point order: another number of CPU threads sums the same products in another order, and that moves
features, probe weights and drift estimates in their last digits. Two records of the same run id *agree* when

- every number they measure (``metrics``, ``trajectory``, ``method.state``) is within
  ``|a - b| <= ATOL + RTOL * max(|a|, |b|)``, and
- everything else they measure is equal: the pre-trained weights' hash, the keys, list lengths, words and flags.

Timings, provenance and the training log are not measurements of the run and are not compared; nor is the hash of
the method's source file (``method.source_sha256``): it says which code made the record, not what the run measured.
``forgetbench verify`` names a differing one beside the numbers' verdict, and the leaderboard marks such rows stale.

Why these numbers (``python bench/reproducibility_noise.py --methods ft``: ``mini-noise``, ``ft``, seed 0, each run
in its own process with its own empty cache, on a loaded 2-core machine, 34 minutes for the three runs): one torch/OpenMP thread against two moved
no accuracy (every accuracy, and so every ΔLP and ΔZS, was bit-identical); the drift estimates moved by up to
4.6e-6 relative (OTDD; absolute 1.5e-6; L2 3.9e-6, kernel 1.9e-6 relative) and the weight drift by 8.7e-8 relative.
Killing a run (SIGKILL) after its checkpoint of step 50 and running it again, which resumed it, gave numbers
bit-identical to an uninterrupted run (the same bench; ``tests/test_resume.py`` holds it too). ``RTOL`` is twenty times the largest thread-count
change seen, ``ATOL`` covers values at or near zero. An accuracy moves by whole test images: 0.1 point on 1,000
images is 1.25e-3 relative at 80%, twelve times ``RTOL``, so a record that was changed, or made with other code, data
or settings, does not agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

#: Relative tolerance of a measured number (see the module's docstring for the measurement behind it).
RTOL = 1e-4
#: Absolute tolerance, for numbers at or near zero (a ΔLP of exactly 0, a drift of 1e-9).
ATOL = 1e-6
#: The tolerance in words, for messages and documentation.
TOLERANCE = f"|a - b| <= {ATOL:g} + {RTOL:g} * max(|a|, |b|)"

#: The parts of a record that hold what a run measured (top-level key, then a sub-key or None for all of it).
MEASURED = (("metrics", None), ("trajectory", None), ("method", "state"), ("model", "weights_sha256"))


@dataclass(frozen=True)
class Disagreement:
    """One measured field on which two records of a run differ beyond the tolerance."""

    field: str
    ours: Any
    theirs: Any

    def describe(self, ours: str = "here", theirs: str = "there") -> str:
        """``field: A (here) against B (there), tolerance ...``."""
        within = f"; tolerance {TOLERANCE}" if _number(self.ours) and _number(self.theirs) else ""
        return f"{self.field}: {self.ours!r} ({ours}) against {self.theirs!r} ({theirs}){within}"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def close(a: float, b: float) -> bool:
    """Whether two measured numbers agree within the reproducibility tolerance."""
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= ATOL + RTOL * max(abs(a), abs(b))


def measured(record: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(dotted field, value) of every leaf of what a record (as JSON) measured; a missing part yields nothing."""
    for key, sub in MEASURED:
        part = record.get(key)
        if sub is not None:
            part = part.get(sub) if isinstance(part, Mapping) else None
        if part is not None:
            yield from _leaves(part, f"{key}.{sub}" if sub else key)


def _leaves(tree: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        for k in sorted(tree):
            yield from _leaves(tree[k], f"{path}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, tree


def disagreements(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[Disagreement]:
    """Every measured field on which two records (as JSON) of the same run differ beyond the tolerance, in field
    order; a field only one of them has is a disagreement too (with None for the other)."""
    a, b = dict(measured(ours)), dict(measured(theirs))
    out = []
    for field in sorted(a.keys() | b.keys()):
        x, y = a.get(field), b.get(field)
        same = close(float(x), float(y)) if _number(x) and _number(y) else (x == y and type(x) is type(y))
        if not same:
            out.append(Disagreement(field, x, y))
    return out


def agree(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Whether two records of one run agree (see the module's docstring)."""
    return not disagreements(ours, theirs)
