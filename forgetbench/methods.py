"""The Method noun: how a fine-tune is regularised or post-processed. Baselines live in ``baselines/``, one file each.

A method is a class with a ``name``, declared hyper-parameters (``hyperparameters``: name -> ``Param``, each with its
default and the values it accepts) and up to five hooks, all optional:

- ``setup(ctx)``: once before training; may return extra parameter groups for the optimiser (e.g. learned weights);
- ``loss(ctx, batch)``: an extra loss term added to the task loss at every step (or None);
- ``after_step(ctx, step)``: after each optimiser step (e.g. weight averaging);
- ``finalize(ctx)``: after training, to post-process the fine-tuned weights (e.g. WiSE-FT interpolation);
- ``batch_sampler(ctx, labels, batch_size, seed)``: how training batches are drawn (default: seeded shuffling);

and two flags: ``trains_encoder`` (False: the encoder stays frozen, no training step runs) and ``head_init``
(overrides the task's head initialisation). A method with a strength knob declares it (``strength = Strength(...)``:
which hyper-parameter, its default grid, which way moves the model less); ``forgetbench sweep --tradeoff`` runs it
over that grid. ``ctx`` (``FinetuneContext``) gives the student encoder and head, the
frozen encoder the method regularises towards, the model's text tower, the task and the device. Methods
never see the training loop, so any method runs under the same protocol.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Optional

import torch
from torch import nn

from .errors import SpecError, UnknownNameError
from .registry import Registry
from .schema import Check, Choice, Flag, Integer, Number, Problems, Text, hint

#: Every method, by name. Filled by importing ``forgetbench.baselines`` (and any ``forgetbench.methods`` entry points).
METHODS = Registry("method")
#: The package of the shipped methods (the repository's ``baselines/`` folder, installed under forgetbench).
BASELINES = "forgetbench.baselines"


@dataclass(frozen=True)
class Param:
    """A declared hyper-parameter: its default (which sets its type) and the values it accepts."""

    default: Any
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def check(self) -> Check:
        if self.choices is not None:
            return Choice(self.choices)
        if isinstance(self.default, bool):
            return Flag()
        if isinstance(self.default, int):
            return Integer(ge=self.ge, le=self.le)
        if isinstance(self.default, float):
            return Number(ge=self.ge, gt=self.gt, le=self.le, coerce=True)
        return Text(f"a {type(self.default).__name__}", allow_empty=True) if isinstance(self.default, str) else \
            _TypeCheck(type(self.default))

    @property
    def accepts(self) -> str:
        """What values it takes, in words ("an integer >= 1"), for tables and messages."""
        return self.check.what


STRONGER = ("up", "down")


@dataclass(frozen=True)
class Strength:
    """A method's strength knob: the hyper-parameter ``param``, the values a trade-off sweep tries (``grid``), and
    which way moves the model less (``stronger``: ``"up"`` when larger values keep it closer to the pre-trained one,
    as a regulariser's weight does; ``"down"`` when smaller values do, as a learning rate or WiSE-FT's alpha).
    ``post_hoc``: the knob acts after training only (in ``finalize``), so one fine-tune serves every grid value.
    The grid should run from "as ft" to "barely moves"; ``weakest_first`` orders it that way."""

    param: str
    grid: tuple
    stronger: str = "up"
    post_hoc: bool = False

    def weakest_first(self) -> tuple:
        """The grid from the value that moves the model most to the one that moves it least."""
        return tuple(sorted(self.grid, reverse=self.stronger == "down"))

    def strongest(self, values) -> Any:
        """The value among ``values`` that moves the model least."""
        return max(values) if self.stronger == "up" else min(values)

    def describe(self) -> str:
        """``lam: 0.1, 1, 10 (larger moves less)``: for tables and messages."""
        values = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.weakest_first())
        way = "larger" if self.stronger == "up" else "smaller"
        return f"{self.param}: {values} ({way} moves less{'; one fine-tune for all' if self.post_hoc else ''})"


#: How far a method that regularises nothing trains (``ft``, ``lp-ft``, ``flyp``): its learning rate as a multiple
#: of the task's (``Method.learning_rate``), and the trade-off grid of that knob, from the task's own learning rate
#: down to a hundredth of it, where the encoder barely moves.
LR_SCALE = Param(1.0, gt=0)
LR_STRENGTH = Strength("lr_scale", grid=(1.0, 0.3, 0.1, 0.03, 0.01), stronger="down")


class _TypeCheck(Check):
    """Any value of one Python type (a declared default of a type the reader knows no better check for)."""

    def __init__(self, kind: type):
        self.kind, self.what = kind, kind.__name__

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        return v if isinstance(v, self.kind) else self.expected(v, path, problems)


@dataclass
class Batch:
    """One training step's data, after the student's forward pass."""

    images: torch.Tensor  # preprocessed, on device
    labels: torch.Tensor
    features: torch.Tensor  # student encoder output [B, D]
    logits: torch.Tensor  # head output [B, C]
    _frozen_features: Optional[torch.Tensor] = None

    def frozen_features(self, ctx: "FinetuneContext") -> torch.Tensor:
        """The frozen encoder's features of these images (computed once per step, no grad)."""
        if self._frozen_features is None:
            with torch.no_grad():
                self._frozen_features = ctx.frozen(self.images).float()
        return self._frozen_features


@dataclass
class FinetuneContext:
    """What a method may look at and change during one fine-tune. Build it with ``FinetuneContext.start``."""

    student: nn.Module  # the image encoder being fine-tuned
    head: nn.Module  # classification head on normalised features
    frozen: nn.Module  # the frozen encoder the method regularises towards: the pre-trained one, or a sequence's anchor
    model: Any  # forgetbench.models.Model: preprocessing, text tower
    task: Any  # forgetbench.tasks.TaskSpec
    device: str = "cpu"
    head_initial: dict = field(default_factory=dict)  # the head's weights before training (WiSE-FT needs them)
    train_dataset: Any = None  # forgetbench.data.ImageDataset being fine-tuned on
    state: dict = field(default_factory=dict)  # scratch space for methods

    @classmethod
    def start(cls, model: Any, method: "Method", head: nn.Module, task: Any, train_dataset: Any, device: str,
              *, student: nn.Module | None = None, frozen: nn.Module | None = None) -> FinetuneContext:
        """The context of one fine-tune of ``model`` with ``method``: ``student`` (default: a fresh copy of the
        model's frozen encoder) trains unless the method keeps the encoder frozen; ``frozen``, what the method
        regularises towards, defaults to the model's own (pre-trained) encoder."""
        from .modes import apply_mode

        fresh = student is None
        student = copy.deepcopy(model.visual) if student is None else student
        for p in student.parameters():
            p.requires_grad_(method.trains_encoder)
        if fresh and method.trains_encoder:  # the task's fine-tuning mode: which encoder parameters train
            apply_mode(student, getattr(task, "train", None))
        return cls(student=student, head=head, frozen=model.visual if frozen is None else frozen, model=model,
                   task=task, device=device, head_initial=copy.deepcopy(head.state_dict()),
                   train_dataset=train_dataset)


class Method:
    """Base class of every method. Subclasses set ``name`` and ``hyperparameters`` and override the hooks they need.

    ``defaults`` (name -> default value) is derived from ``hyperparameters``; a method that declares ``defaults``
    alone (the older form) gets hyper-parameters that check the type of the default only.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""  # the paper or URL the method follows; the leaderboard shows it
    hyperparameters: ClassVar[dict[str, Param]] = {}
    defaults: ClassVar[dict[str, Any]] = {}
    #: False: the encoder is frozen and no fine-tuning step runs (linear probing).
    trains_encoder: ClassVar[bool] = True
    #: The fine-tuning modes (``train.mode``, ``forgetbench.modes``) the method makes sense in; None: every one
    #: (``forgetbench.modes.NEEDS`` says which shipped methods need particular ones).
    modes: ClassVar[Optional[tuple[str, ...]]] = None
    #: "zeroshot" or "linear-probe" to override the task's head initialisation; None keeps the task's.
    head_init: ClassVar[Optional[str]] = None
    #: The strength knob a trade-off sweep varies (None: the method runs once, at its defaults).
    strength: ClassVar[Optional[Strength]] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "hyperparameters" in own:
            declared = own["hyperparameters"]
            cls.hyperparameters = {k: p if isinstance(p, Param) else Param(p) for k, p in declared.items()}
        elif "defaults" in own:
            cls.hyperparameters = {k: Param(v) for k, v in own["defaults"].items()}
        cls.defaults = {k: p.default for k, p in cls.hyperparameters.items()}
        if "reference" in own and "citation" not in own:  # the older name of the citation
            cls.citation = own["reference"]
        if cls.strength is not None and ("strength" in own or "hyperparameters" in own):
            cls._check_strength()

    @classmethod
    def _check_strength(cls) -> None:
        """A strength names a declared hyper-parameter, and its whole grid is accepted: a bad declaration fails
        when the method's file is imported, not in the middle of a sweep."""
        s = cls.strength
        where = f"method {cls.name!r}: strength"
        if s.stronger not in STRONGER:
            raise SpecError(f"{where}: stronger must be one of {', '.join(STRONGER)}, got {s.stronger!r}")
        if s.param not in cls.hyperparameters:
            raise SpecError(f"{where}: {s.param!r} is not a declared hyper-parameter (declared: "
                            f"{', '.join(sorted(cls.hyperparameters)) or 'none'})")
        if len(set(s.grid)) != len(s.grid) or len(s.grid) < 2:
            raise SpecError(f"{where}: the grid needs at least two distinct values, got {s.grid!r}")
        for value in s.grid:
            cls.check_params({s.param: value})

    def __init__(self, **params):
        self.params = self.check_params(params)

    @classmethod
    def check_params(cls, params: dict) -> dict:
        """Defaults filled in; an undeclared name or a value it does not accept is a one-line SpecError."""
        resolved = dict(cls.defaults)
        for key, value in (params or {}).items():
            declared = cls.hyperparameters.get(key)
            if declared is None:
                accepted = ", ".join(sorted(cls.hyperparameters)) or "none"
                raise SpecError(f"method {cls.name!r} has no hyper-parameter {key!r}{hint(key, cls.hyperparameters)} "
                                f"(it declares: {accepted})")
            problems = Problems(raise_at=lambda path, message: SpecError(
                f"method {cls.name!r}: hyper-parameter {path!r}: {message}"))
            resolved[key] = declared.check(value, key, problems)
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
    return METHODS.register_named(cls)


_FILE_METHODS: dict[str, list[str]] = {}  # resolved path of a user method file -> the names it registered


def _import_file(path: Path, data: bytes | None = None) -> list[str]:
    """Import a method file once; returns the method names it registered. With ``data``, those bytes are run as the
    file (bytes already checked, e.g. against a hash: the file is not read again)."""
    key = str(path.resolve())
    if key not in _FILE_METHODS:
        before = set(METHODS._items)
        module_name = f"forgetbench_user_method_{path.stem}_{abs(hash(key))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            if data is None:
                spec.loader.exec_module(module)
            else:
                exec(compile(data, str(path), "exec"), module.__dict__)
        except SyntaxError as e:  # one line where the file is wrong, not a traceback through the importer
            _forget(module_name, before)
            raise SpecError(f"method file {path}:{e.lineno}: syntax error: {e.msg}; no run was started") from None
        except Exception as e:  # a class without `name`, a failed import, ...: the file's own error, in one line
            _forget(module_name, before)
            raise SpecError(f"method file {path} failed to load ({type(e).__name__}: {e}); no run was started") from None
        _FILE_METHODS[key] = sorted(set(METHODS._items) - before)
    return _FILE_METHODS[key]


def _forget(module_name: str, registered_before: set[str]) -> None:
    """Undo a method file's partial import: its module and whatever it registered before failing."""
    sys.modules.pop(module_name, None)
    for name in set(METHODS._items) - registered_before:
        del METHODS._items[name]


def _load_baselines() -> None:
    """Import every module of the shipped baselines, then installed plug-ins (entry point group
    ``forgetbench.methods``)."""
    package = importlib.import_module(BASELINES)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{BASELINES}.{info.name}")
    for ep in entry_points(group="forgetbench.methods"):
        ep.load()


METHODS.add_loader(_load_baselines)


class MethodSource(NamedTuple):
    """The file that defines a method class: where it is, its text, and the sha256 of its bytes."""

    path: Path
    text: str
    sha256: str


def method_source(cls: type[Method]) -> MethodSource:
    """The source file that defines ``cls`` (a baseline's file in ``baselines/``, a user's ``.py`` file, an installed
    plug-in's module file), read now. Records carry its sha256 so that a record made with other code of the method is
    detectable; a submission can carry its text. Helpers the class imports from other files are not included (a
    method subclassing another is hashed by its own file only). A class without a readable source file (one defined
    interactively) is a one-line SpecError."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if not file or not Path(file).is_file():
        raise SpecError(f"method {cls.name or cls.__name__!r}: its class has no source file (it was defined in "
                        f"module {cls.__module__!r}); define it in a .py file")
    data = Path(file).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"method {cls.name or cls.__name__!r}: its source file {file} is not UTF-8 ({e})") from None
    return MethodSource(Path(file), text, hashlib.sha256(data).hexdigest())


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


def import_method_code(path: Path, data: bytes) -> list[str]:
    """Run ``data`` (a method file's bytes, already checked against its hash) as the file ``path``; returns the
    method names it registered. Only ``verify --allow-code`` calls this (``forgetbench.method_sources``)."""
    METHODS.names()  # the baselines first, so the file's own registrations are told apart
    return _import_file(path, data)


def learning_rate(method: Method, task_lr: float) -> float:
    """A fine-tune's base learning rate: the task's, times ``lr_scale`` for a method that declares that
    hyper-parameter (the strength knob of methods that regularise nothing, such as ``ft``: how far they train)."""
    return task_lr * method.params.get("lr_scale", 1.0)
