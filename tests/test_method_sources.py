"""A submission carries its method's source file as data: stored by sha256, refused unless a record carries it,
never imported by validation or submission."""
from __future__ import annotations

import hashlib

from forgetbench.cli import main

from test_submit import make_record, snapshot, write_lines

# A method file whose import would leave a trace: a submission must store it without ever running it.
SOURCE = ("import pathlib\npathlib.Path(__file__).with_name('IMPORTED').write_text('ran')\n"
          "from forgetbench.methods import Method, register\n\n\n@register\nclass Carried(Method):\n"
          "    name = 'my-method'\n    hyperparameters = {}\n").encode()


def _submission(tmp_path, source: bytes):
    """A method file, and a submitted record that carries the sha256 of ``source``."""
    method = tmp_path / "my_method.py"
    method.write_bytes(SOURCE)
    record = make_record(seed=3)
    record["method"]["source_sha256"] = hashlib.sha256(source).hexdigest()
    return method, write_lines(tmp_path / "sub.jsonl", [record])


def test_a_method_source_is_stored_as_those_bytes_under_their_sha256_unrun(tmp_path, capsys):
    method, sub = _submission(tmp_path, SOURCE)
    results = tmp_path / "results"
    assert main(["submit", str(sub), "--method-source", str(method), "--results", str(results)]) == 0
    sha = hashlib.sha256(SOURCE).hexdigest()
    stored = results / "method-sources" / f"{sha}.py"
    assert sorted(p.name for p in (results / "method-sources").iterdir()) == [stored.name]
    assert stored.read_bytes() == SOURCE
    assert f"stored method source {stored}" in capsys.readouterr().out
    assert not (tmp_path / "IMPORTED").exists() and not (stored.parent / "IMPORTED").exists()  # data, never run
    before = snapshot(results)  # submitting again changes nothing
    assert main(["submit", str(sub), "--method-source", str(method), "--results", str(results)]) == 0
    assert snapshot(results) == before


def test_a_source_whose_hash_no_record_carries_is_refused_and_nothing_written(tmp_path, capsys):
    method, sub = _submission(tmp_path, SOURCE + b"# the file the records were made with\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "kept.jsonl").write_text('{"kept": true}\n')
    before = snapshot(results)
    assert main(["submit", str(sub), "--method-source", str(method), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"forgetbench: error: --method-source {method}: its sha256 "
                                               f"{hashlib.sha256(SOURCE).hexdigest()} is not the method.source_sha256")
    assert "my-method" in err[0]  # what the records do carry
    assert snapshot(results) == before and not (results / "method-sources").exists()
    assert not (tmp_path / "IMPORTED").exists()


def test_a_source_that_is_not_a_py_file_is_refused_before_anything(tmp_path, capsys):
    _, sub = _submission(tmp_path, SOURCE)
    other = tmp_path / "my_method.txt"
    other.write_bytes(SOURCE)
    results = tmp_path / "results"
    assert main(["submit", str(sub), "--method-source", str(other), "--results", str(results)]) == 2
    assert "expected a method's .py file" in capsys.readouterr().err and not results.exists()
