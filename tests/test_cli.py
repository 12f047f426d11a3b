"""The command line: bad input is one line on stderr, exit code 2, nothing written."""
import subprocess
import sys


from forgetbench.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _bad(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("forgetbench: error:") and "\n" not in err
    for n in needles:
        assert n in err, err
    return err


def test_unknown_task_method_and_dataset(capsys, tmp_path):
    _bad(capsys, ["run", "mini-shape", "--results", str(tmp_path)], "did you mean 'mini-shapes'")
    _bad(capsys, ["run", "mini-shapes", "--methods", "ldfis", "--results", str(tmp_path)], "did you mean 'ldifs'")
    task = tmp_path / "t.yaml"
    task.write_text((ROOT / "tasks" / "mini-shapes.yaml").read_text().replace("mini/textures", "mini/texture"))
    _bad(capsys, ["run", str(task), "--results", str(tmp_path)], "mini/texture", "did you mean 'mini/textures'")
    assert list(tmp_path.iterdir()) == [task]  # nothing written


def test_malformed_yaml_names_file_and_line(capsys, tmp_path):
    task = tmp_path / "broken.yaml"
    task.write_text("name: broken\nversion: 1\nmodel: a: b\n")  # "mapping values are not allowed here"
    _bad(capsys, ["validate", str(task)], "broken.yaml:3:")


def test_undeclared_method_hyper_parameter(capsys, tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text((ROOT / "tasks" / "mini-shapes.yaml").read_text() + "method_params:\n  l2sp: {alpah: 1.0}\n")
    _bad(capsys, ["validate", str(task)], "alpah", "did you mean 'alpha'")


def test_missing_split(capsys, tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text((ROOT / "tasks" / "mini-shapes.yaml").read_text().replace(
        "  dataset: mini/shapes\n", "  dataset: mini/shapes\n  test_split: holdout\n"))
    _bad(capsys, ["run", str(task), "--methods", "lp", "--results", str(tmp_path / "r")], "no split 'holdout'")
    assert not (tmp_path / "r" / "mini-shapes.jsonl").exists()


def test_ls_and_validate(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ["mini/shapes", "mini/digits", "mini-clip", "ft", "lp-ft", "l2sp", "ldifs", "wise-ft", "mini-shapes"]:
        assert name in out
    assert main(["validate", "mini-shapes"]) == 0


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "forgetbench.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "run" in out.stdout and "leaderboard" in out.stdout
