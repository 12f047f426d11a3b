"""Verification of a submission: re-run its records from what they say (task, method, parameters, seed) and compare.

A record is *verified* when the re-run's record agrees with it (``forgetbench.records.agreement``: every measured
number within the reproducibility tolerance, everything else measured equal). Records of mini tasks (the shipped
mini CLIP: seconds to a minute each) are all re-run; of costly tasks, a seeded sample of ``sample`` records. A method
that is not registered here (not in ``baselines/`` nor installed) is re-run from its source file
(``forgetbench.method_sources``: given with the submission or stored in the results folder, found by the record's
``method.source_sha256``) only with ``allow_code``; otherwise, or without such a source, its records are skipped. A
re-run made with other code of the method than the record (another ``method.source_sha256``: the file changed since)
says so beside its outcome, which the numbers decide.
Verified runs are listed in ``RESULTS/verifications/verified.jsonl`` (run id and the sha256 of the verified record),
which the leaderboard reads: a row whose runs are all verified is marked, and the mark survives regeneration.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .method_sources import MethodSources
from .methods import METHODS
from .records.agreement import Disagreement, disagreements
from .records.store import _append_line, _locked_append_fd, json_line, parse_lines
from .errors import SpecError
from .submit import SubmissionError, check_submission

#: Where a results folder lists its verified runs (a subfolder: never read as a task's records).
VERIFIED_FILE = Path("verifications") / "verified.jsonl"
#: A task whose model is this is cheap to re-run: every one of its records is verified.
CHEAP_MODEL = "mini-clip"


def record_sha256(record: dict) -> str:
    """The hash of a record's canonical JSON line (what a verification vouches for)."""
    return hashlib.sha256(json_line(record, "record")).hexdigest()


@dataclass
class Outcome:
    """One record's verification: ``status`` is "agrees", "disagrees" or "skipped" (with why)."""

    line: int
    record: dict
    status: str
    why: str = ""
    seconds: float = 0.0
    differ: list[Disagreement] = field(default_factory=list)

    @property
    def label(self) -> str:
        r = self.record
        return f"line {self.line}: {r['task']['name']} {r['method']['name']} seed {r['seed']}"


def choose(records: list[tuple[int, dict]], sample: int, seed: int) -> tuple[list, list]:
    """(records to re-run, records left out): every mini-task record, and a seeded sample of ``sample`` of the
    costly ones."""
    cheap = [(n, r) for n, r in records if r["task"]["spec"].get("model") == CHEAP_MODEL]
    costly = [(n, r) for n, r in records if r["task"]["spec"].get("model") != CHEAP_MODEL]
    picked = random.Random(seed).sample(costly, min(sample, len(costly)))
    chosen = sorted(cheap + picked, key=lambda x: x[0])
    return chosen, [x for x in costly if x not in picked]


def _why_not_runnable(rec: dict, sources: MethodSources, allow_code: bool) -> str:
    """Why a record's method cannot be re-run here ("" when it can: registered, or loaded now from its source)."""
    name, sha = rec["method"]["name"], rec["method"].get("source_sha256")
    if name in METHODS:
        return ""
    unknown = f"method {name!r} is not registered here (baselines/ or an installed package)"
    where = sources.locate(sha) if sha else None
    if where is None:
        missing = (f"no source with its sha256 {sha[:12]}… in {sources.folder}/ nor given with --method-source" if sha
                   else "its record carries no method.source_sha256")
        return f"{unknown} and {missing}: it cannot be re-run"
    if not allow_code:
        return f"{unknown}; its source is {where}: add --allow-code to run that file (it is code) and re-run it"
    try:
        sources.load(sha, name)
    except SpecError as e:
        return str(e)
    return ""


def _other_code(again: dict, rec: dict) -> str:
    """A note when the re-run's method source differs from the record's (the method's file changed since)."""
    ours, theirs = again["method"].get("source_sha256"), rec["method"].get("source_sha256")
    if ours and theirs and ours != theirs:
        return (f"made with other code of {rec['method']['name']} (sha256 {theirs[:12]}… in the record vs "
                f"{ours[:12]}… here)")
    return ""


def verify(path, sample: int = 1, seed: int = 0, device: str | None = None, progress: bool = True,
           out: Callable[[str], None] = print, sources: MethodSources | None = None,
           allow_code: bool = False) -> list[Outcome]:
    """Re-run the chosen records of a submission and compare each with its re-run (see the module's docstring).

    A submission that is not valid, or a given method source that none of its records carries, is an error before
    anything runs."""
    from .run import run_one  # torch and the protocols: only when something is re-run
    from .tasks import load_task
    from .tasks.variants import settings_of_record, with_settings

    sub = check_submission(path)
    if sub.problems:
        raise SubmissionError(sub.problems)
    sources = sources or MethodSources("results")
    sources.require_claimed(sub.carried, path)
    chosen, left = choose(sub.records, sample, seed)
    out(f"verifying {len(chosen)} of {len(sub.records)} record(s) of {path}"
        + (f" ({len(left)} record(s) of costly tasks left out: a seeded sample of {sample}, --sample)" if left else ""))
    outcomes = []
    for i, (line, rec) in enumerate(chosen, start=1):
        name = rec["method"]["name"]
        if why := _why_not_runnable(rec, sources, allow_code):
            outcomes.append(Outcome(line, rec, "skipped", why))
        else:
            t = time.time()
            # in the record's fine-tuning mode, if it has one (the mode is part of the run id)
            task = with_settings(load_task(rec["task"]["name"]), settings_of_record(rec["task"]["spec"]))
            again = run_one(task, name, rec["seed"], params=rec["method"]["params"], device=device,
                            progress=progress).to_json()
            differ = disagreements(again, rec) if again["run_id"] == rec["run_id"] else \
                [Disagreement("run_id", again["run_id"], rec["run_id"])]
            why = "; ".join(filter(None, [_other_code(again, rec),
                                          differ[0].describe("re-run", "submitted") if differ else ""]))
            outcomes.append(Outcome(line, rec, "disagrees" if differ else "agrees", seconds=time.time() - t,
                                    differ=differ, why=why))
        o = outcomes[-1]
        out(f"  [{i}/{len(chosen)}] {o.label}: {o.status}" + (f" ({o.why})" if o.why else "")
            + (f" ({o.seconds:.0f}s)" if o.seconds else ""))
    return outcomes


def record_verified(results, outcomes: list[Outcome]) -> int:
    """Append the runs that agreed to the results folder's verification list; returns how many."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    agreed = [o for o in outcomes if o.status == "agrees"]
    if not agreed:
        return 0
    with _locked_append_fd(Path(results) / VERIFIED_FILE) as fd:
        for o in agreed:
            _append_line(fd, json_line({"run_id": o.record["run_id"], "record_sha256": record_sha256(o.record),
                                        "verified_utc": now}, "verification"))
    return len(agreed)


def verified_hashes(results) -> set[tuple[str, str]]:
    """(run id, record sha256) of every verified run listed in a results folder."""
    path = Path(results) / VERIFIED_FILE
    data = path.read_bytes() if path.is_file() else b""
    return {(o.get("run_id"), o.get("record_sha256")) for _, o in parse_lines(data, path, warn=True)}
