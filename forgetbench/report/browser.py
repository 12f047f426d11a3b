"""Open a generated page in headless Chromium: read back its DOM after the scripts ran, or take a screenshot.

Used to check that the HTML pages really render (tests) and to make the screenshot in ``docs/``. Chromium is an
optional system package (Debian: ``apt-get install chromium``); ``find_chromium`` returns None without it.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ForgetbenchError

# No network, no profile, no background services: the page must render from its own bytes.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1"]
NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    browser = find_chromium()
    if browser is None:
        raise ForgetbenchError(f"no headless browser found (looked for {', '.join(NAMES)} on PATH); "
                               "on Debian: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="forgetbench-chromium-") as profile:  # a new, empty profile each time
        proc = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              timeout=timeout)
    if proc.returncode != 0:
        raise ForgetbenchError(f"{browser} exited with {proc.returncode}: "
                               f"{proc.stderr.decode('utf-8', 'replace').strip()[-500:]}")
    return proc


def page_url(path: str | Path, fragment: str = "") -> str:
    return Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")


def dump_dom(path: str | Path, fragment: str = "", timeout: float = 60) -> str:
    """The page's DOM, serialised after its scripts ran (``fragment`` is the part after '#')."""
    return _run(["--dump-dom", page_url(path, fragment)], timeout).stdout.decode("utf-8")


def screenshot(path: str | Path, out: str | Path, width: int = 1400, height: int = 2000, fragment: str = "",
               timeout: float = 60) -> Path:
    """A PNG of the page's first ``width`` x ``height`` pixels."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={out}", page_url(path, fragment)], timeout)
    if not out.is_file():
        raise ForgetbenchError(f"the browser wrote no screenshot to {out}")
    return out
