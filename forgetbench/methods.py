"""The Method noun: how a fine-tune is regularised or post-processed. Baselines live in ``baselines/``, one file each.

A method is a class with a ``name``, declared hyper-parameters (``defaults``) and up to four hooks, all optional:

- ``setup(ctx)``: once before training; may return extra parameter groups for the optimiser (e.g. learned weights);
- ``loss(ctx, batch)``: an extra loss term added to the task loss at every step (or None);
- ``after_step(ctx, step)``: after each optimiser step (e.g. weight averaging);
- ``finalize(ctx)``: after training, to post-process the fine-tuned weights (e.g. WiSE-FT interpolation);
- ``batch_sampler(ctx, labels, batch_size, seed)``: how training batches are drawn (default: seeded shuffling).

``ctx`` (``FinetuneContext``) gives the student encoder and head, the frozen reference encoder, the model's text tower,
the task and the device. Methods never see the training loop, so any method runs under the same protocol.
"""
from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from .errors import SpecError, UnknownNameError
from .registry import Registry

#: Every method, by name. Filled by importing ``baselines/`` (and any ``forgetbench.methods`` entry points).
METHODS = Registry("method")

BASELINES_DIR = Path(__file__).resolve().parent.parent / "baselines"


@dataclass
class Batch:
    """One training step's data, after the student's forward pass."""

    images: torch.Tensor  # preprocessed, on device
    labels: torch.Tensor
    features: torch.Tensor  # student encoder output [B, D]
    logits: torch.Tensor  # head output [B, C]
    _reference_features: Optional[torch.Tensor] = None

    def reference_features(self, ctx: "FinetuneContext") -> torch.Tensor:
        """The frozen reference encoder's features of these images (computed once per step, no grad)."""
        if self._reference_features is None:
            with torch.no_grad():
                self._reference_features = ctx.reference(self.images).float()
        return self._reference_features


@dataclass
class FinetuneContext:
    """What a method may look at and change during one fine-tune."""

    student: nn.Module  # the image encoder being fine-tuned
    head: nn.Module  # classification head on normalised features
    reference: nn.Module  # frozen encoder the fine-tune starts from (or the previous step's, in a sequence)
    model: Any  # forgetbench.models.Model: preprocessing, text tower
    task: Any  # forgetbench.tasks.TaskSpec
    device: str = "cpu"
    head_initial: dict = field(default_factory=dict)  # the head's weights before training (WiSE-FT needs them)
    train_dataset: Any = None  # forgetbench.data.ImageDataset being fine-tuned on
    state: dict = field(default_factory=dict)  # scratch space for methods


class Method:
    """Base class of every method. Subclasses set ``name`` and ``defaults`` and override the hooks they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: False: the encoder is frozen and no fine-tuning step runs (linear probing).
    trains_encoder: ClassVar[bool] = True
    #: "zeroshot" or "linear-probe" to override the task's head initialisation; None keeps the task's.
    head_init: ClassVar[Optional[str]] = None

    def __init__(self, **params):
        self.params = self.check_params(params)

    @classmethod
    def check_params(cls, params: dict) -> dict:
        """Defaults filled in; an undeclared name or a value of the wrong type is a one-line SpecError."""
        resolved = dict(cls.defaults)
        for key, value in (params or {}).items():
            if key not in cls.defaults:
                close = difflib.get_close_matches(key, list(cls.defaults), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                accepted = ", ".join(sorted(cls.defaults)) or "none"
                raise SpecError(f"method {cls.name!r} has no hyper-parameter {key!r}{hint} (it declares: {accepted})")
            default = cls.defaults[key]
            if isinstance(default, bool) or isinstance(value, bool):
                ok = isinstance(value, bool) and isinstance(default, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float))
                value = float(value) if ok else value
            else:
                ok = isinstance(value, type(default))
            if not ok:
                raise SpecError(f"method {cls.name!r}: hyper-parameter {key!r} must be {type(default).__name__}, "
                                f"got {value!r}")
            resolved[key] = value
        return resolved

    # ----- hooks (all optional)
    def setup(self, ctx: FinetuneContext) -> Optional[list[dict]]:
        return None

    def loss(self, ctx: FinetuneContext, batch: Batch) -> Optional[torch.Tensor]:
        return None

    def after_step(self, ctx: FinetuneContext, step: int) -> None:
        pass

    def finalize(self, ctx: FinetuneContext) -> None:
        pass

    def batch_sampler(self, ctx: FinetuneContext, labels, batch_size: int, seed: int):
        """A torch batch sampler over the training split (e.g. class-balanced batches), or None for shuffling."""
        return None


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: ``@register`` adds a Method subclass to the registry under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    METHODS.register(cls.name, cls)
    return cls


_FILE_METHODS: dict[str, list[str]] = {}  # resolved path of a user method file -> the names it registered


def _import_file(path: Path) -> list[str]:
    """Import a method file once; returns the method names it registered."""
    key = str(path.resolve())
    if key not in _FILE_METHODS:
        before = set(METHODS._items)
        module_name = f"forgetbench_user_method_{path.stem}_{abs(hash(key))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        _FILE_METHODS[key] = sorted(set(METHODS._items) - before)
    return _FILE_METHODS[key]


def _load_baselines() -> None:
    """Import every file in ``baselines/``, then installed plug-ins (entry point group ``forgetbench.methods``)."""
    as_package = _baselines_is_package()
    for path in sorted(BASELINES_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        if as_package:
            importlib.import_module(f"baselines.{path.stem}")
        else:
            _import_file(path)
    from importlib.metadata import entry_points

    for ep in entry_points(group="forgetbench.methods"):
        ep.load()


def _baselines_is_package() -> bool:
    try:
        return importlib.util.find_spec("baselines") is not None and (BASELINES_DIR / "__init__.py").exists()
    except (ImportError, ValueError):
        return False


METHODS.add_loader(_load_baselines)


def get_method(name_or_path: str) -> type[Method]:
    """A method class by registered name, or from a user's ``.py`` file that defines (and registers) one."""
    if name_or_path.endswith(".py"):
        path = Path(name_or_path)
        if not path.is_file():
            raise UnknownNameError(f"method file {path} does not exist")
        METHODS.names()  # load the baselines first, so the file's own registrations are told apart
        added = _import_file(path)
        if not added:
            raise UnknownNameError(f"method file {path} registered no method (decorate a Method subclass with "
                                   f"@forgetbench.methods.register)")
        return METHODS.get(added[0])
    return METHODS.get(name_or_path)
