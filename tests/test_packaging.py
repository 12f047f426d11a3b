"""forgetbench installs like a package: a wheel carries the baselines and the task files inside ``forgetbench`` (no
top-level ``baselines`` in site-packages) and works from a fresh virtual environment, far from any checkout."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What pip says when it cannot reach a package index (the build backend is fetched from one).
OFFLINE = ("Could not find a version that satisfies the requirement", "No matching distribution found",
           "Failed to establish a new connection", "Temporary failure in name resolution", "Network is unreachable")

USER_METHOD = """
from forgetbench.methods import Method, Param, register


@register
class Shrink(Method):
    name = "test-user-shrink"
    hyperparameters = {"beta": Param(0.5, ge=0)}

    def loss(self, ctx, batch):
        return self.params["beta"] * batch.features.pow(2).mean()
"""


def test_pyproject_lists_every_package():
    """The package list is explicit (two folders install under other names): every package folder must be in it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "forgetbench").rglob("__init__.py")}
    mapped = set(config["package-dir"])
    assert set(config["packages"]) == found | mapped
    assert config["package-dir"] == {"forgetbench.baselines": "baselines", "forgetbench.task_files": "tasks"}


def _site_dirs() -> list[str]:
    """The folders this interpreter imports installed packages from (the dependencies), not the checkout."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_wheel_installs_and_runs_in_a_fresh_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    dist = tmp_path / "dist"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], tmp_path, env)
    if build.returncode != 0:
        if any(words in build.stdout + build.stderr for words in OFFLINE):
            pytest.skip("cannot build the wheel here: no package index to fetch the build backend from")
        pytest.fail(f"pip wheel failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    (wheel,) = dist.glob("forgetbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "forgetbench/baselines/l2sp.py" in names and "forgetbench/task_files/mini-shapes.yaml" in names
    assert "forgetbench/suites/mini.yaml" in names and "forgetbench/models/weights/mini-clip.safetensors" in names
    assert not [n for n in names if n.split("/")[0] in ("baselines", "tasks", "tests")]  # nothing at the top level

    # a fresh environment that borrows this one's dependencies (torch is not installed twice) but not forgetbench
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env).returncode == 0
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    (Path(purelib.stdout.strip()) / "forgetbench-test-deps.pth").write_text("\n".join(_site_dirs()) + "\n")
    install = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   tmp_path, env)
    assert install.returncode == 0, install.stderr[-3000:]

    where = _run([str(python), "-c", "import importlib.util, forgetbench; print(forgetbench.__file__); "
                  "print(importlib.util.find_spec('baselines'))"], tmp_path, env)
    assert where.returncode == 0, where.stderr[-3000:]
    file, top_level = where.stdout.split()
    assert Path(file).is_relative_to(venv) and top_level == "None"  # the wheel's code; no `baselines` package

    forgetbench = str(venv / "bin" / "forgetbench")
    listed = _run([forgetbench, "ls", "methods"], tmp_path, env)
    assert listed.returncode == 0 and "  l2sp" in listed.stdout and "  zscl" in listed.stdout, listed.stderr[-3000:]

    # a shipped task with a user's method from a .py path; a user's task from FORGETBENCH_TASKS_PATH
    (tmp_path / "my_method.py").write_text(USER_METHOD)
    mine = tmp_path / "mytasks"
    mine.mkdir()
    shipped = (ROOT / "tasks" / "mini-shapes.yaml").read_text()
    (mine / "my-shapes.yaml").write_text(shipped.replace("name: mini-shapes", "name: my-shapes"))
    env = {**env, "FORGETBENCH_TASKS_PATH": str(mine)}
    dry = _run([forgetbench, "run", "mini-shapes", "--dry-run", "--methods", "ft,my_method.py"], tmp_path, env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "method test-user-shrink" in dry.stdout and "dry run ok: 2 method(s) stepped" in dry.stdout
    valid = _run([forgetbench, "validate", "my-shapes"], tmp_path, env)
    assert valid.returncode == 0 and "my-shapes: ok" in valid.stdout, valid.stderr[-3000:]
