"""Task files: YAML text -> a validated ``TaskSpec``, every problem one ``SpecError`` line at ``file:line``.

The YAML is read with a safe loader (no Python objects), every key and list item's line is recorded so that a
problem found later points at its line, and a key given twice is refused (PyYAML would keep the last one).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from ..schema import join
from .spec import TaskSpec


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 insists on ``1.0e-3``; everybody writes ``1e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _record_lines(node: yaml.Node, path: str, lines: dict[str, int], source: str, seen: set[int]) -> None:
    """Fill ``lines`` with dotted path -> 1-based line of every key and list item; reject duplicate keys.

    ``seen`` stops at nodes already visited, so aliases (even recursive ones) are walked once.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            sub = join(path, key.value)
            if key.value in keys:  # PyYAML would silently keep the last one
                raise SpecError(f"{source}:{key.start_mark.line + 1}: {sub}: duplicate key")
            keys.add(key.value)
            lines[sub] = key.start_mark.line + 1
            _record_lines(value, sub, lines, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{path}[{i}]"] = item.start_mark.line + 1
            _record_lines(item, f"{path}[{i}]", lines, source, seen)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """YAML text -> (data, line table); any YAML problem becomes a one-line ``SpecError`` at file:line:column."""
    lines: dict[str, int] = {}
    loader = None
    try:
        loader = _Loader(text)  # the reader rejects control characters right here
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _record_lines(node, "", lines, source, set())
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = "; ".join(" ".join(str(x).split()) for x in (e.context, e.problem) if x) or "syntax error"
        raise SpecError(f"{where}: invalid YAML: {what}") from None
    except yaml.reader.ReaderError as e:  # a control character; it carries an offset, not a mark
        line = text.count("\n", 0, e.position) + 1
        char = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        raise SpecError(f"{source}:{line}: invalid YAML: character {char} is not allowed") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise SpecError(f"{source}: invalid task: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_task_text(text: str, source: str = "<string>") -> TaskSpec:
    """Parse and validate the YAML text of a task; errors name ``source``."""
    data, lines = parse_yaml(text, source)
    if data is None:
        raise SpecError(f"{source}: the task file is empty (expected a mapping with name, version, model, ...)")
    return TaskSpec.from_dict(data, source, lines=lines)


def read_text(path: Path, source: str, what: str = "task file") -> str:
    """The UTF-8 text of a file; a missing or unreadable one is a one-line ``SpecError``."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{source}: no such {what}") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SpecError(f"{source}: cannot read {what} ({e.strerror or e})") from None
