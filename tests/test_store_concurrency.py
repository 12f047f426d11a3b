"""Many processes writing one results store at once: 8 writers x 50 records -> 400 records, none lost or mangled,
while readers never see half a line and failure records go to their own log."""
from __future__ import annotations

import json
import multiprocessing as mp
import warnings

from forgetbench.records import ResultStore

from test_results import make_record

WRITERS, PER_WRITER = 8, 50


def expected(worker: int, i: int) -> dict:
    """Every record differs in its seed and in its numbers, so a mix-up of two lines cannot go unnoticed."""
    task = "mini-shapes" if i % 2 == 0 else "mini-colours"  # two files written at once
    return make_record(task=task, seed=worker * 1000 + i, acc=round(50 + worker + i / 100, 2))


def write(root: str, worker: int) -> None:
    store = ResultStore(root)
    for i in range(PER_WRITER):
        assert store.append(expected(worker, i))
        if i % 10 == 0:
            store.write_failure({"task": "mini-shapes", "task_version": 1, "method": "ft", "params": {},
                                 "seed": worker * 1000 + i}, f"worker {worker} failure {i}")


def read(root: str, stop, bad) -> None:
    """Load repeatedly while the writers work; any warning (a corrupt line seen) is a failure."""
    store = ResultStore(root)
    while not stop.is_set():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store.load()
            store.failures()
            store.run_ids()
        if caught:
            bad.value += len(caught)


def test_concurrent_writers_and_readers(tmp_path):
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    stop, bad = ctx.Event(), ctx.Value("i", 0)
    readers = [ctx.Process(target=read, args=(str(tmp_path), stop, bad)) for _ in range(2)]
    writers = [ctx.Process(target=write, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for p in readers + writers:
        p.start()
    for p in writers:
        p.join(120)
    stop.set()
    for p in readers:
        p.join(60)
    assert [p.exitcode for p in writers + readers] == [0] * (WRITERS + 2)
    assert bad.value == 0  # no reader ever met a partial or corrupt line

    store = ResultStore(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = [r.to_json() for r in store.load()]
        failures = store.failures()
    want = [expected(w, i) for w in range(WRITERS) for i in range(PER_WRITER)]
    assert len(records) == WRITERS * PER_WRITER == 400
    key = lambda r: r["seed"]  # noqa: E731
    assert sorted(records, key=key) == sorted(want, key=key)  # every record whole, exactly as written
    lines = b"".join(p.read_bytes() for p in tmp_path.glob("mini-*.jsonl")).splitlines()
    assert len(lines) == 400 and all(json.loads(line) for line in lines)
    assert sorted(f["reason"] for f in failures) == sorted(
        f"worker {w} failure {i}" for w in range(WRITERS) for i in range(0, PER_WRITER, 10))
