import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Generated data and feature caches go to a test folder unless the caller chose one (CI sets it).
os.environ.setdefault("FORGETBENCH_CACHE", str(Path(tempfile.gettempdir()) / "forgetbench-test-cache"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny tensors: threads cost more than they give
# Property tests draw the same examples on every run, so a green suite stays green in CI; a bug they find is pinned
# with @example. HYPOTHESIS_PROFILE=explore draws fresh examples each run, for hunting.
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty, private cache folder for tests that check caching itself."""
    monkeypatch.setenv("FORGETBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# Screenshots the browser tests take for a person to look at: listed at the end of the run.
_SCREENSHOTS = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[_SCREENSHOTS] = []


@pytest.fixture
def screenshot_path(request, tmp_path):
    """``screenshot_path(name)``: where to save a screenshot: $FORGETBENCH_SCREENSHOTS (else the test's tmp folder)."""
    def path(name: str) -> Path:
        folder = Path(os.environ.get("FORGETBENCH_SCREENSHOTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        request.config.stash[_SCREENSHOTS].append(folder / name)
        return folder / name
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    shots = [p for p in config.stash.get(_SCREENSHOTS, []) if p.exists()]
    if shots:
        terminalreporter.write_sep("-", "screenshots")
        for p in shots:
            terminalreporter.write_line(str(p))
