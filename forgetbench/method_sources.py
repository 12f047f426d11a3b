"""Method sources carried by a submission: the ``.py`` file of a method not in ``baselines/``, kept as data.

A record carries the sha256 of the file that defined its method (``method.source_sha256``, from
``forgetbench.methods.method_source``). ``submit --method-source FILE`` stores that file's bytes, unread as code, as
``RESULTS/method-sources/<sha256>.py``, and only when a submitted record carries exactly that hash. Validation and
submission never import it. ``verify --allow-code`` (off by default) may run it, to re-run the records of a method
not registered here: the bytes are hashed again first, and only the bytes that hashed to the record's sha256 are run;
a stored file whose bytes no longer match its name is refused unloaded.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

from .atomic import atomic_write
from .errors import SpecError

#: Where a results folder keeps method sources, by sha256 (a subfolder: never read as a task's records).
SOURCES_DIR = Path("method-sources")
#: A method's file is a few KiB; anything larger is refused unread.
MAX_BYTES = 1 << 20


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def carried(records: Iterable[tuple[int, dict]]) -> dict[str, str]:
    """sha256 -> method name, of every method source the (checked) records say they were made with."""
    return {r["method"]["source_sha256"]: r["method"]["name"] for _, r in records if r["method"].get("source_sha256")}


class MethodSources:
    """The method sources a command sees: files given with the submission (``--method-source``, read once, as
    data) and those stored in the results folder ``results``."""

    def __init__(self, results: str | os.PathLike, given: Iterable[str | os.PathLike] = ()):
        self.folder = Path(results) / SOURCES_DIR
        self.given: dict[str, tuple[Path, bytes]] = {}
        for path in map(Path, given):
            if path.suffix != ".py":
                raise SpecError(f"--method-source {path}: expected a method's .py file")
            try:
                size = path.stat().st_size
                if size > MAX_BYTES:
                    raise SpecError(f"--method-source {path}: {size} bytes, more than the {MAX_BYTES} accepted")
                data = path.read_bytes()
            except OSError as e:
                raise SpecError(f"--method-source {path}: cannot be read ({e.strerror or e})") from None
            self.given[sha256_of(data)] = (path, data)

    def require_claimed(self, claims: Mapping[str, str], file: str | os.PathLike) -> None:
        """A SpecError (before any work) for a given source whose sha256 no record of ``file`` carries."""
        for sha, (path, _) in self.given.items():
            if sha not in claims:
                have = ", ".join(f"{name} {s[:12]}…" for s, name in sorted(claims.items(), key=lambda x: x[1]))
                raise SpecError(f"--method-source {path}: its sha256 {sha} is not the method.source_sha256 of any "
                                f"record in {file} ({'they carry ' + have if have else 'none carries one'}); give "
                                "the file the records were made with")

    def stored_path(self, sha: str) -> Path:
        return self.folder / f"{sha}.py"

    def locate(self, sha: str) -> Path | None:
        """Where the source of that sha256 is (a given file, else the store), or None; its bytes are not checked."""
        if sha in self.given:
            return self.given[sha][0]
        return self.stored_path(sha) if self.stored_path(sha).is_file() else None

    def load(self, sha: str, name: str) -> Path:
        """Import the source of that sha256 so that method ``name`` is registered: the bytes are hashed first and
        refused unrun when they do not hash to ``sha``. Returns where they came from."""
        from .methods import METHODS, import_method_code  # torch: only when code is loaded

        where = self.locate(sha)
        if where is None:
            raise SpecError(f"no source of method {name!r} with sha256 {sha} is here")
        data = self.given[sha][1] if sha in self.given else where.read_bytes()
        if (actual := sha256_of(data)) != sha:
            raise SpecError(f"{where}: refused, not loaded: its bytes hash to {actual}, not to the {sha} of its name "
                            "(it was changed after it was stored)")
        added = import_method_code(where, data)
        if name not in METHODS:
            raise SpecError(f"{where} registers {', '.join(map(repr, added)) or 'no method'}, not the record's "
                            f"method {name!r}")
        return where

    def store(self) -> list[Path]:
        """Write every given source into the store, atomically, under its sha256 (one already there with the right
        bytes is left as it is); returns the paths written."""
        written = []
        for sha, (_, data) in sorted(self.given.items()):
            target = self.stored_path(sha)
            if not (target.is_file() and sha256_of(target.read_bytes()) == sha):
                written.append(atomic_write(target, data))
        return written
