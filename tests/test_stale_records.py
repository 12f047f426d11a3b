"""Stale records are detectable: a record carries the sha256 of its method's source file (``method_source``) and of
the pre-trained weights; the leaderboard marks rows made with other method code and refuses mixed weights."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from forgetbench.errors import SpecError
from forgetbench.methods import get_method, method_source
from forgetbench.records import parse_record, run_id
from forgetbench.report.board import STALE
from forgetbench.report.leaderboard import render_leaderboard

from test_leaderboard import rec, table_rows

BASELINES = Path(__file__).resolve().parents[1] / "baselines"


def test_a_baselines_source_is_its_file_in_baselines():
    src = method_source(get_method("fda"))
    assert src.path.resolve() == (BASELINES / "fda.py").resolve()
    assert src.text == (BASELINES / "fda.py").read_text(encoding="utf-8")
    assert src.sha256 == hashlib.sha256((BASELINES / "fda.py").read_bytes()).hexdigest()
    assert method_source(get_method("proxy-fda")).path.name == "proxy_fda.py"  # the subclass's own file


def test_a_user_methods_source_is_its_py_file_and_changes_with_it(tmp_path):
    path = tmp_path / "my_stale_method.py"
    code = ("from forgetbench.methods import Method, register\n\n"
            "@register\nclass Mine(Method):\n    name = 'my-stale-method'\n")
    path.write_text(code, encoding="utf-8")
    src = method_source(get_method(str(path)))
    assert src.path == path and src.text == code
    assert src.sha256 == hashlib.sha256(code.encode()).hexdigest()
    path.write_text(code + "# edited\n", encoding="utf-8")
    assert method_source(get_method(str(path))).sha256 != src.sha256  # read now, not when imported


def with_code(record: dict, sha: str | None) -> dict:
    if sha is not None:
        record["method"]["source_sha256"] = sha
    return record


def render(records) -> str:
    return render_leaderboard([parse_record(r) for r in records])


def test_rows_made_with_other_method_code_are_marked_and_named():
    current = method_source(get_method("ft")).sha256
    old = "0" * 64
    md = render([with_code(rec("ft", 0, 90.0, [-1.0]), current), with_code(rec("ft", 1, 91.0, [-1.0]), old),
                 with_code(rec("lp", 0, 80.0, [0.0]), method_source(get_method("lp")).sha256)])
    rows = {r["Method"]: r for r in table_rows(md, "## mini-shapes (version 1)")}
    assert set(rows) == {f"ft {STALE}", "lp"}  # one stale seed makes the row stale; lp is current
    assert f"{STALE} stale: made with other code of the method than its file holds now" in md
    assert "`method.source_sha256` differs): ft;" in md
    assert "carry no method code hash" not in md


def test_old_records_without_a_code_hash_read_as_unknown_and_unmarked():
    md = render([rec("ft", 0, 90.0, [-1.0]), with_code(rec("lp", 0, 80.0, [0.0]), method_source(get_method("lp")).sha256)])
    rows = {r["Method"] for r in table_rows(md, "## mini-shapes (version 1)")}
    assert rows == {"ft", "lp"}
    assert "1 of 2 records carry no method code hash (written before records had one): whether their code is " \
           "current is unknown." in md
    assert "stale:" not in md


def test_one_task_version_made_from_two_weights_is_refused():
    a, b = rec("ft", 0, 90.0, [-1.0]), rec("lp", 0, 80.0, [0.0])
    a["model"]["weights_sha256"], b["model"]["weights_sha256"] = "a" * 64, "b" * 64
    with pytest.raises(SpecError, match=r"task 'mini-shapes' version 1 mixes records made from different pre-trained "
                                        r"weights \(model.weights_sha256 aaaaaaaaaaaa in 1 records, bbbbbbbbbbbb in 1 "
                                        r"records\)"):
        render([a, b])
    b["task"]["version"] = 2  # an older version is not ranked with it: no conflict
    b["run_id"] = run_id("mini-shapes", 2, "lp", {}, 0)
    assert "## mini-shapes (version 2)" in render([a, b])


def test_a_bad_code_hash_is_refused():
    with pytest.raises(SpecError, match="method.source_sha256"):
        render([with_code(rec("ft", 0, 90.0, [-1.0]), "not-a-hash")])
