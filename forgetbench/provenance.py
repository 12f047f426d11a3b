"""Where a result came from: code version, library versions, hardware and time.

Everything here is best-effort: provenance must never be the reason a finished run is lost, so each probe
falls back to ``None`` instead of raising. The hostname is deliberately not recorded (records are published).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

# key in the record -> distribution name for importlib.metadata
_DISTRIBUTIONS = {
    "forgetbench": "forgetbench",
    "torch": "torch",
    "torchvision": "torchvision",
    "open_clip_torch": "open_clip_torch",
    "timm": "timm",
    "numpy": "numpy",
    "scikit-learn": "scikit-learn",
    "pot": "POT",
    "pandas": "pandas",
}

# Generated outputs that a run itself writes; they must not make the checkout count as dirty.
_IGNORED_FOR_DIRTY = (":(top,exclude)results", ":(top,exclude)leaderboard.md", ":(top,exclude)leaderboard.html")

_PACKAGE_DIR = Path(__file__).resolve().parent


def _git(args: list[str], cwd: Path) -> str | None:
    """Run git, returning stripped stdout, or None on any failure (no git, not a repo, no commits)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # `git status` must not take index.lock beside other processes
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(package_dir: Path = _PACKAGE_DIR) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding the package; ``None`` values when it is not in one."""
    none = {"git_commit": None, "git_dirty": None}
    top = _git(["rev-parse", "--show-toplevel"], package_dir)
    if top is None:
        return none
    # An installed copy inside some other repository (a venv under a project) is ignored by that repository:
    # its commit would describe the wrong code.
    if _git(["check-ignore", "-q", str(package_dir)], package_dir) is not None:
        return none
    commit = _git(["rev-parse", "HEAD"], package_dir)  # None in a repository without commits
    status = _git(["status", "--porcelain", "--", ".", *_IGNORED_FOR_DIRTY], Path(top))
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Python and library versions; a library that is not installed maps to ``None``."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _DISTRIBUTIONS.items():
        out[key] = _version(dist)
    if out["forgetbench"] is None:  # running from a checkout that was never pip-installed
        out["forgetbench"] = getattr(sys.modules.get("forgetbench"), "__version__", None)
    return out


def hardware() -> dict[str, Any]:
    """CPU/GPU description; no hostname or user name."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": None,
        "cuda_device": None,
    }
    try:
        import torch
    except Exception:  # torch missing or broken: still record the rest
        return info
    try:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:
        pass
    return info


def collect(seed: int | None = None) -> dict[str, Any]:
    """The provenance block of a result record (JSON-serialisable)."""
    return {
        **git_info(),
        "versions": versions(),
        "hardware": hardware(),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
    }
