"""Result records: typed, validated once per read or write, stored one JSON line per run.

``RunRecord`` holds what every record kind shares; each protocol's record type adds its metrics
(``forgetbench.protocols``), such as the held-out metrics of ``forgetbench.evaluate.heldout``. ``parse_record`` /
``read_record`` are the one validator; ``ResultStore`` the store.
"""
from ..evaluate.heldout import CONSISTENCY_TOL, Checkpoint, CheckpointHeldout, HeldoutMetrics, summarize_heldout
from .base import FAILURES_FILE, MethodRef, ModelRef, RunRecord, TaskRef, Timings, run_id
from .read import RecordError, parse_record, read_record, record_problems
from .store import ResultStore

__all__ = ["CONSISTENCY_TOL", "Checkpoint", "CheckpointHeldout", "FAILURES_FILE", "HeldoutMetrics", "MethodRef",
           "ModelRef", "RecordError", "ResultStore", "RunRecord", "TaskRef", "Timings", "parse_record", "read_record",
           "record_problems", "run_id", "summarize_heldout"]
