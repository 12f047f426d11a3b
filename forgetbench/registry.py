"""One small registry used by every kind of named thing: datasets, models, methods, tasks, protocols, drift metrics."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

from .errors import UnknownNameError


class Registry:
    """A name -> object map filled by a decorator; unknown names fail with "did you mean" hints."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._loaders: list[Callable[[], None]] = []

    def register(self, name: str, obj: Any = None):
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")``."""

        def add(o):
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = o
            return o

        return add(obj) if obj is not None else add

    def register_named(self, cls: Any) -> Any:
        """Class decorator: register ``cls`` under its own (non-empty) ``name`` attribute."""
        if not getattr(cls, "name", ""):
            raise ValueError(f"{cls.__name__} needs a non-empty `name`")
        return self.register(cls.name, cls)

    def add_loader(self, loader: Callable[[], None]) -> None:
        """A callable run once, on first lookup, that fills the registry (lazy imports)."""
        self._loaders.append(loader)

    def _load(self) -> None:
        while self._loaders:
            self._loaders.pop(0)()

    def get(self, name: str) -> Any:
        self._load()
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._items)) or "none"
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {known})")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def entries(self) -> list[Any]:
        """The registered objects in the order they were registered."""
        self._load()
        return list(self._items.values())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
