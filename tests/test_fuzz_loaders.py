"""Property tests: malformed task files, result files, records, checkpoints and sweep grids give one clear error
(or are skipped with a warning where a store must go on reading), never a traceback, and never a partial write.

The task-spec parser itself is fuzzed in test_tasks.py; here task files go through the command line.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from forgetbench.checkpoint import Checkpointer
from forgetbench.cli import main
from forgetbench.errors import SpecError
from forgetbench.records import ResultStore, parse_record
from forgetbench.sweep import parse_grid

from test_results import make_record

ROOT = Path(__file__).resolve().parent.parent
TASK_TEXT = (ROOT / "tasks" / "mini-shapes.yaml").read_text()
SOME = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=10)


def one_line_error(capsys, code: int) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forgetbench: error: "), err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ task files

@SOME
@given(st.integers(0, len(TASK_TEXT)), st.integers(0, 12), st.text(max_size=6))
def test_damaged_task_files_give_one_line_on_the_command_line(tmp_path_factory, capsys, at, cut, insert):
    path = tmp_path_factory.mktemp("task") / "damaged.yaml"
    text = TASK_TEXT[:at] + insert + TASK_TEXT[at + cut:]
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    code = main(["validate", str(path)])
    if code == 0:  # the damage left a valid task (a comment, a description, ...)
        capsys.readouterr()
        return
    one_line_error(capsys, code)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not utf-8", b"- a\n- list\n", b"name: [unclosed\n", b"\x00"])
def test_unusable_task_files_write_nothing(tmp_path, capsys, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    results = tmp_path / "results"
    one_line_error(capsys, main(["run", str(path), "--results", str(results)]))
    one_line_error(capsys, main(["sweep", str(path), "--results", str(results)]))
    assert not results.exists()


# ------------------------------------------------------------------------------------------ result files

GOOD = [make_record(seed=s) for s in range(3)]
LINES = st.lists(
    st.sampled_from(range(3)).map(lambda i: ("good", i))
    | st.tuples(st.just("cut"), st.sampled_from(range(3)), st.integers(1, 200))
    | st.tuples(st.just("bytes"), st.binary(max_size=40))
    | st.tuples(st.just("json"), JSON),
    max_size=8)


def _render(item) -> bytes:
    kind = item[0]
    if kind == "good":
        return json.dumps(GOOD[item[1]]).encode()
    if kind == "cut":
        line = json.dumps(GOOD[item[1]]).encode()
        return line[: len(line) - item[2]]
    if kind == "bytes":
        return item[1].replace(b"\n", b" ")
    return json.dumps(item[1]).encode()


@SOME
@given(LINES)
def test_damaged_result_files_are_read_without_crashing(tmp_path_factory, items):
    root = tmp_path_factory.mktemp("results")
    path = root / "mini-shapes.jsonl"
    lines = [_render(i) for i in items]
    path.write_bytes(b"\n".join(lines))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = [r.to_json() for r in ResultStore(root).load()]  # every record read is a valid one
    intact = [GOOD[i[1]] for i in items if i[0] == "good"]
    assert [r for r in loaded if r in intact] == intact  # every intact line is read, in order
    skipped = sum(1 for line in lines if line.strip()) - len(loaded)
    assert len(caught) == skipped  # each line left out is reported ...
    for w in caught:
        message = str(w.message)
        assert "\n" not in message and f"{path}:" in message  # ... in one line naming the file and line
    with warnings.catch_warnings(record=True) as again:  # the command reads past the same lines, saying so again
        warnings.simplefilter("always")
        assert main(["leaderboard", "--results", str(root), "--out", str(root / "board.md")]) == 0
    assert [str(w.message) for w in again] == [str(w.message) for w in caught]


def _mutate(record: dict, path: list[str], value) -> dict:
    record = copy.deepcopy(record)
    node = record
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return record


_DELETE = object()
PATHS = [["schema"], ["run_id"], ["status"], ["task"], ["task", "name"], ["task", "version"], ["method", "params"],
         ["seed"], ["metrics", "target", "acc"], ["metrics", "heldout"], ["metrics", "summary", "delta_lp_mean"],
         ["timings", "total_s"], ["provenance"], ["task", "spec", "lr"]]


@SOME
@given(st.sampled_from(PATHS), JSON | st.just(_DELETE) | st.just(math.nan) | st.just(math.inf))
@example(["metrics", "heldout"], {"\n": None})  # once printed a newline inside the one-line message
def test_malformed_records_are_refused_and_leave_the_file_as_it_was(tmp_path_factory, path, value):
    root = tmp_path_factory.mktemp("store")
    store = ResultStore(root)
    store.append(GOOD[0])
    file = root / "mini-shapes.jsonl"
    before = file.read_bytes()
    bad = _mutate(GOOD[1], path, value)
    try:
        added = store.append(bad)
    except SpecError as e:
        assert "\n" not in str(e)
        assert file.read_bytes() == before and sorted(p.name for p in root.iterdir()) == ["mini-shapes.jsonl"]
        return
    # accepted: it was valid after all (e.g. an unchecked field), and it went in whole
    parse_record(bad)
    assert added and file.read_bytes().startswith(before) and file.read_bytes().count(b"\n") == 2


# ------------------------------------------------------------------------------------------ checkpoints, grids

@SOME
@given(st.binary(max_size=300))
def test_damaged_checkpoints_are_ignored_never_trusted(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("ckpt") / "run.pt"
    path.write_bytes(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Checkpointer(path, 1, {"run_id": "0" * 16, "steps": 3}).load() is None
    # exactly one warning of ours (torch may add its own about the bytes it was shown, e.g. an odd pickle protocol)
    assert sum("starts from step 0" in str(w.message) for w in caught) == 1


@SOME
@given(st.lists(st.text(alphabet="ab.=,_- 1e", max_size=10), max_size=4))
def test_grid_arguments_parse_or_give_one_clear_error(items):
    try:
        grid = parse_grid(items)
    except SpecError as e:
        assert "\n" not in str(e) and "--grid" in str(e)
        return
    assert all(values for values in grid.values())
