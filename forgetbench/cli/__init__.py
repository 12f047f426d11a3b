"""The `forgetbench` command line: run, sweep, leaderboard, plot, audit, submit, ls, validate, ...

``parser`` holds the grammar; each command's handler lives in ``running`` (run, sweep), ``results`` (leaderboard,
plot, validate-results, submit, audit) or ``catalog`` (ls, validate, bench, download, pretrain-mini) and is imported
only when its command runs. Every user error is one line, ``forgetbench: error: ...``, with exit code 2.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from ..errors import ForgetbenchError
from .parser import build_parser

__all__ = ["build_parser", "main"]


_DATA_ENV = ("FORGETBENCH_DATA", "FORGETBENCH_DOWNLOAD", "FORGETBENCH_ALLOW_DOWNLOAD", "HF_HUB_OFFLINE")


def _apply_data_args(args) -> None:
    """The data flags become environment variables, so that child processes (sweeps, torchrun) see them too."""
    if getattr(args, "data_root", None):
        os.environ["FORGETBENCH_DATA"] = str(Path(args.data_root).expanduser().resolve())
    if getattr(args, "download", False):
        os.environ["FORGETBENCH_DOWNLOAD"] = os.environ["FORGETBENCH_ALLOW_DOWNLOAD"] = "1"
    elif os.environ.get("FORGETBENCH_ALLOW_DOWNLOAD", "").lower() not in ("1", "true", "yes"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the local cache or a file, never the network


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    saved = {k: os.environ.get(k) for k in _DATA_ENV}
    try:
        _apply_data_args(args)
        module, _, name = args.handler.partition(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(args)
    except ForgetbenchError as e:
        print(f"forgetbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("forgetbench: interrupted; runs not finished were not recorded", file=sys.stderr)
        return 130
    finally:  # main() may be called in-process (tests, notebooks): leave the environment as it was
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
