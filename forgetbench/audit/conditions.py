"""``--fail-if`` conditions: ``metric op threshold`` on an audit's summary, to guard a training pipeline in CI."""
from __future__ import annotations

import dataclasses
import operator
import re
from typing import Mapping

from ..errors import SpecError
from ..evaluate.drift_metrics import drift_metrics


def fail_metrics() -> dict[str, str]:
    """Names a --fail-if condition may use -> the summary statistic they read (one per registered drift metric)."""
    return {"mean_delta_lp": "delta_lp_mean", "worst_delta_lp": "delta_lp_worst", "mean_delta_zs": "delta_zs_mean",
            "worst_delta_zs": "delta_zs_worst", **{f"mean_drift_{m.name}": m.summary_key for m in drift_metrics()},
            "weight_drift": "weight_drift"}


_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_CONDITION = re.compile(r"\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


@dataclasses.dataclass(frozen=True)
class FailCondition:
    """``metric op threshold``, e.g. ``mean_delta_lp<-2``: the audit fails (exit 1) when it holds."""

    text: str
    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> FailCondition:
        m = _CONDITION.fullmatch(text)
        known = fail_metrics()
        names = ", ".join(sorted({*known, *known.values()}))
        if not m:
            raise SpecError(f"--fail-if {text!r}: expected METRIC OP NUMBER, e.g. 'mean_delta_lp<-2' (OP one of "
                            f"<, <=, >, >=; METRIC one of {names})")
        metric = known.get(m.group(1), m.group(1))
        if metric not in known.values():
            raise SpecError(f"--fail-if {text!r}: unknown metric {m.group(1)!r} (known: {names})")
        return cls(text.strip(), metric, m.group(2), float(m.group(3)))

    def value(self, result: Mapping) -> float:
        if self.metric not in result["summary"]:
            raise SpecError(f"--fail-if {self.text!r}: the audit has no {self.metric} (zero-shot needs a text tower; "
                            f"drifts need the suite to compute them)")
        return float(result["summary"][self.metric])

    def holds(self, result: Mapping) -> bool:
        return _OPS[self.op](self.value(result), self.threshold)
