"""Atomic writes: a file is replaced whole or not at all, so a reader (or a crash) never sees half of one.

Every file forgetbench writes goes through here: records, leaderboards, reports, figures, weights, checkpoints and
caches. Content is written to a temporary file beside the target (same file system, so the rename is atomic), flushed
to disk, given ordinary permissions (``mkstemp`` creates 0600) and renamed over the target.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

#: bytes, text (written as UTF-8, newlines untouched) or a function that writes into the open binary file
Content = Union[bytes, str, Callable[[BinaryIO], None]]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (best effort: some file systems refuse to sync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stage(path: Path, content: Content, mode: int, durable: bool) -> str:
    """The content in a temporary file beside ``path``; returns its name (removed again if writing fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: str | os.PathLike, content: Content, *, mode: int = 0o644, durable: bool = True) -> Path:
    """Replace ``path`` with ``content`` atomically; ``durable=False`` skips the fsyncs (caches that can be rebuilt)."""
    with staged_writes(durable=durable) as stage:
        stage(path, content, mode=mode)
    return Path(path)


@contextmanager
def staged_writes(durable: bool = True) -> Iterator[Callable[..., None]]:
    """Stage several files, then rename them all into place when the block ends without an error.

    ``stage(path, content, mode=0o644)`` writes a temporary file at once; nothing is replaced until every file is
    written, and an error anywhere removes every temporary file and leaves the targets as they were.
    """
    staged: list[tuple[Path, str]] = []

    def stage(path: str | os.PathLike, content: Content, mode: int = 0o644) -> None:
        staged.append((Path(path), _stage(Path(path), content, mode, durable)))

    try:
        yield stage
        while staged:
            target, tmp = staged[0]
            os.replace(tmp, target)
            staged.pop(0)
            if durable:
                fsync_dir(target.parent)
    finally:
        for _, tmp in staged:
            Path(tmp).unlink(missing_ok=True)
