"""Whether progress bars may show: on a terminal by default (tqdm's ``disable=None``), never with ``--quiet``."""
from __future__ import annotations

_quiet = False


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no progress bar anywhere in this process (fine-tunes, feature extraction, evaluations)."""
    global _quiet
    _quiet = quiet


def bar_disable(progress: bool = True) -> bool | None:
    """tqdm's ``disable``: None shows a bar on a terminal only (never in logs or CI); True hides it."""
    return True if _quiet or not progress else None
