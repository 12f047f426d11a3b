"""Where real datasets live on disk, and whether forgetbench may download them.

The data root is, in order: ``--data-root`` on the command line (``set_data_root``), ``$FORGETBENCH_DATA``, then
``data_root:`` in the config file (``$FORGETBENCH_CONFIG``, default ``~/.config/forgetbench/config.yaml``). Each
dataset sits in its own folder under the root (``forgetbench ls datasets`` names them). Downloads happen only when asked:
``--download`` / ``FORGETBENCH_DOWNLOAD=1`` / ``download: true`` in the config file, for the datasets torchvision
can fetch.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from ...errors import DataError

ENV_DATA = "FORGETBENCH_DATA"
ENV_CONFIG = "FORGETBENCH_CONFIG"
ENV_DOWNLOAD = "FORGETBENCH_DOWNLOAD"
_override: dict[str, object] = {}


def config_path() -> Path:
    return Path(os.environ.get(ENV_CONFIG) or Path.home() / ".config" / "forgetbench" / "config.yaml").expanduser()


def _config() -> dict:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable config file ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the config file must be a mapping (e.g. `data_root: /data`), got {type(data).__name__}")
    return data


def set_data_root(path: str | Path | None) -> None:
    """The command line's ``--data-root``: wins over the environment and the config file (None clears it)."""
    if path is None:
        _override.pop("root", None)
    else:
        _override["root"] = Path(path).expanduser()


def set_download(allowed: bool | None) -> None:
    """The command line's ``--download`` (None clears it)."""
    if allowed is None:
        _override.pop("download", None)
    else:
        _override["download"] = bool(allowed)


def data_root() -> Path:
    """The data root; a DataError says how to set one when none is."""
    if "root" in _override:
        return _override["root"]
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser()
    value = _config().get("data_root")
    if value:
        return Path(str(value)).expanduser()
    raise DataError(f"no data root for the real datasets: pass --data-root DIR, set {ENV_DATA}=DIR, or put "
                    f"`data_root: DIR` in {config_path()}")


def data_root_or_none() -> Path | None:
    try:
        return data_root()
    except DataError:
        return None


def downloads_allowed() -> bool:
    if "download" in _override:
        return bool(_override["download"])
    if os.environ.get(ENV_DOWNLOAD, "").strip().lower() in ("1", "true", "yes"):
        return True
    return bool(_config().get("download", False))
