import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Generated data and feature caches go to a test folder unless the caller chose one (CI sets it).
os.environ.setdefault("FORGETBENCH_CACHE", str(Path(tempfile.gettempdir()) / "forgetbench-test-cache"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny tensors: threads cost more than they give


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty, private cache folder for tests that check caching itself."""
    monkeypatch.setenv("FORGETBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
