"""Task specs: a versioned fine-tune-then-measure-forgetting protocol, kept as data in ``tasks/*.yaml``.

A task names the model, the fine-tune dataset, the held-out datasets and how to evaluate them, the training
hyper-parameters, the default methods and the seeds. ``load_task`` finds a task by name or path and validates it;
every problem becomes one ``SpecError`` line that starts with ``file:line`` so the user can jump to it.
"""
from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import reprlib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import yaml

from .errors import SpecError, UnknownNameError
from .registry import Registry

ENV_TASKS_PATH = "FORGETBENCH_TASKS_PATH"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
HEAD_INITS = ("zeroshot", "linear-probe")
BATCHNORM = ("frozen",)  # train.batchnorm: what BatchNorm layers do while fine-tuning (unset: batch statistics)
DRIFTS = ("l2", "kernel", "otdd")
REFERENCES = ("previous", "original")  # what a sequence step's method regularises towards
SEQUENCE_ACCURACIES = ("zs", "lp")  # what fills a sequence's accuracy matrix
_PACKAGE_TASKS = Path(__file__).resolve().parent.parent / "tasks"
_INTERNAL = ("source", "lines")  # TaskSpec bookkeeping, not part of the protocol
#: Field metadata of optional sections: left out of ``to_dict`` when unset, so older records keep their exact form.
_OMIT_IF_NONE = MappingProxyType({"omit_if_none": True})


# ----------------------------------------------------------------------------------------------- the schema


@dataclass(frozen=True, kw_only=True)
class FinetuneSpec:
    """The dataset the model is fine-tuned on, and which of its splits play which role.

    ``seen_classes`` (class names) selects the absent-class protocol: fine-tune on those classes only, evaluate over
    all of them. ``subset`` (split name -> images) uses a seeded sample of that many images of those splits of the
    fine-tune dataset (a protocol sized for a CPU; ``data.subsets.sample_subset``). A sequence task has no ``dataset``
    here (its datasets are in ``sequence``), only the split roles.
    """

    dataset: str | None = field(default=None, metadata=_OMIT_IF_NONE)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    seen_classes: tuple[str, ...] | None = field(default=None, metadata=_OMIT_IF_NONE)
    subset: Mapping[str, int] | None = field(default=None, metadata=_OMIT_IF_NONE)


@dataclass(frozen=True, kw_only=True)
class ClassSplitSpec:
    """One dataset cut into ``tasks`` equal groups of classes (Split CIFAR-100 10x10), in a seeded class order."""

    dataset: str
    tasks: int
    class_order_seed: int | None = 0  # null: the dataset's own class order


@dataclass(frozen=True, kw_only=True)
class SequenceSpec:
    """Continual fine-tuning: steps run in order, each starting from the previous step's encoder.

    Exactly one of ``datasets`` (one step per dataset) and ``split`` (class groups of one dataset). ``reference`` is
    the frozen model a step's method regularises towards (the original model, or the previous step's result);
    ``accuracy`` says what fills the accuracy matrix R (zero-shot and/or the task's linear probe).
    """

    datasets: tuple[str, ...] | None = field(default=None, metadata=_OMIT_IF_NONE)
    split: ClassSplitSpec | None = field(default=None, metadata=_OMIT_IF_NONE)
    reference: str = "previous"
    accuracy: tuple[str, ...] = SEQUENCE_ACCURACIES

    def finetune_datasets(self) -> tuple[str, ...]:
        """The registered datasets the steps fine-tune on."""
        return self.datasets if self.datasets is not None else (self.split.dataset,)


@dataclass(frozen=True, kw_only=True)
class LinearProbeSpec:
    """The fixed linear-probe protocol: logistic regression, C chosen on the grid by validation accuracy."""

    C_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    max_iter: int = 1000


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """What is measured on the held-out datasets."""

    datasets: tuple[str, ...]
    linear_probe: LinearProbeSpec = LinearProbeSpec()
    zero_shot: bool = True  # skipped automatically for models without a text tower
    drift: tuple[str, ...] = ()
    checkpoints: int = 0  # intermediate checkpoints to evaluate; 0 = only the final model


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Fine-tuning hyper-parameters. Exactly one of ``epochs`` / ``steps`` is set."""

    optimizer: str = "adamw"
    lr: float
    weight_decay: float = 0.0
    batch_size: int
    epochs: int | None = None
    steps: int | None = None
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float | None = None
    head_init: str = "zeroshot"
    label_smoothing: float = 0.0
    # "frozen": BatchNorm layers normalise with their pre-trained running statistics and keep them (their scale and
    # shift still train); unset: they use and update batch statistics, as in training from scratch. Models without
    # BatchNorm (ViTs) are the same either way.
    batchnorm: str | None = field(default=None, metadata=_OMIT_IF_NONE)


@dataclass(frozen=True, kw_only=True)
class PaperTarget:
    """A published number the task reproduces (its reproduction ledger): where it is, what it measures, its value."""

    paper: str  # paper and table, e.g. "Proxy-FDA (Huang et al., ICML 2025), Table 1"
    metric: str  # what the number is, in the result record's words where it has them (e.g. "summary.delta_lp_mean")
    method: str | None = None  # the method the number belongs to
    value: float | None = None  # null: no published value was found (the note says what is known)
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One validated task. Build it with ``from_dict`` or ``load_task``; ``to_dict`` gives the resolved record form.

    ``source`` (where it came from) and ``lines`` (dotted field path -> line in that file) only serve error
    messages; they take no part in equality or ``to_dict``.
    """

    name: str
    version: int
    description: str = ""
    model: str
    finetune: FinetuneSpec
    evaluate: EvalSpec
    train: TrainSpec
    methods: tuple[str, ...] = ("ft",)
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    seeds: tuple[int, ...]
    sequence: SequenceSpec | None = field(default=None, metadata=_OMIT_IF_NONE)  # continual fine-tuning
    targets: tuple[PaperTarget, ...] | None = field(default=None, metadata=_OMIT_IF_NONE)  # published numbers
    source: str = field(default="<dict>", compare=False, repr=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved spec (every default filled in) as plain JSON types, for result records."""
        return _plain(self)

    def params_for(self, method: str) -> dict[str, Any]:
        """The task's overrides of ``method``'s hyper-parameters (empty when it has none), as plain types."""
        return _plain(self.method_params.get(method, {}))

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>", *, lines: Mapping[str, int] | None = None) -> TaskSpec:
        """Validate a parsed spec; raise ``SpecError`` naming ``source`` (and the line, when ``lines`` has it)."""
        return _build(_Ctx(source, dict(lines or {})), d)


def _plain(x: Any) -> Any:
    """Dataclasses, mappings and tuples -> dicts and lists (JSON types)."""
    if is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in fields(x) if f.name not in _INTERNAL
                and not (f.metadata.get("omit_if_none") and getattr(x, f.name) is None)}
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in _INTERNAL)


# ----------------------------------------------------------------------------------------------- validation

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 60, 60, 2, 5, 4


def _show(v: Any) -> str:
    """A short one-line rendering of a user's value, in YAML words where Python's would mislead."""
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if v is None:
        return "null (empty)"
    return _REPR.repr(v)


def _join(path: str, key: Any) -> str:
    key = key if isinstance(key, str) and re.fullmatch(r"[\w/+-]+", key) else _REPR.repr(key)
    return f"{path}.{key}" if path else key


def _line_of(lines: Mapping[str, int], path: str) -> int | None:
    """Line of ``path``, else of its nearest recorded parent (a missing key is reported at its section)."""
    if path in lines:
        return lines[path]
    for i in range(len(path) - 1, 0, -1):  # cut before each '.' or '[' (longest parent first)
        if path[i] in ".[" and path[:i] in lines:
            return lines[path[:i]]
    return None


def _prefix(source: str, lines: Mapping[str, int], path: str) -> str:
    line = _line_of(lines, path)
    return f"{source}:{line}" if line is not None else source


def _hint(value: Any, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6) if isinstance(value, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


class _Ctx:
    """Where errors point: the source name and the line table of its keys."""

    def __init__(self, source: str, lines: dict[str, int]):
        self.source, self.lines = source, lines

    def err(self, path: str, msg: str) -> SpecError:
        where = _prefix(self.source, self.lines, path)
        return SpecError(f"{where}: {path}: {msg}" if path else f"{where}: {msg}")


def _section(ctx: _Ctx, value: Any, path: str, cls: type | None, required: tuple[str, ...]) -> Mapping[str, Any]:
    """Check ``value`` is a mapping with string keys, all of ``required`` and no key outside ``cls``'s fields.

    ``cls=None`` accepts any string key (method names, parameter names).
    """
    accepted = _keys(cls) if cls is not None else None
    if not isinstance(value, Mapping):
        keys = f" with keys {', '.join(accepted)}" if accepted else ""
        what = f"expected a mapping{keys}, got {_show(value)}"
        raise ctx.err(path, what if path else f"the top level must be a mapping ({what})")
    for key in value:
        if not isinstance(key, str):
            raise ctx.err(_join(path, key), f"keys must be strings, got {_show(key)}")
        if accepted is not None and key not in accepted:
            listing = ", ".join(sorted(accepted))
            raise ctx.err(_join(path, key), f"unknown key{_hint(key, accepted)} (accepted: {listing})")
    for key in required:
        if key not in value:
            raise ctx.err(_join(path, key), "missing required field")
    return value


def _int(ctx: _Ctx, v: Any, path: str, minimum: int, maximum: int | None = None) -> int:
    # bool is an int subclass in Python; `epochs: true` is a typo, not 1
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if not ok or v < minimum or (maximum is not None and v > maximum):
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ctx.err(path, f"expected an integer {rng}, got {_show(v)}")
    return int(v)


def _num(ctx: _Ctx, v: Any, path: str, desc: str, ok: Callable[[float], bool]) -> float:
    """A finite real number (ints accepted, bools not) for which ``ok`` holds; ``desc`` says which in words."""
    x = None
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        try:
            x = float(v)
        except OverflowError:  # a huge YAML int
            x = None
    if x is None or not math.isfinite(x) or not ok(x):
        raise ctx.err(path, f"expected {desc}, got {_show(v)}")
    return x


def _str(ctx: _Ctx, v: Any, path: str, what: str = "a non-empty string") -> str:
    if not isinstance(v, str) or not v.strip():
        raise ctx.err(path, f"expected {what}, got {_show(v)}")
    return v


def _choice(ctx: _Ctx, v: Any, path: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in allowed:
        raise ctx.err(path, f"expected one of {', '.join(allowed)}, got {_show(v)}{_hint(v, allowed)}")
    return v


def _list(ctx: _Ctx, v: Any, path: str, item: Callable[[Any, str], Any], nonempty: bool = True) -> tuple:
    """A list of distinct items, each checked by ``item(value, path)``."""
    if not isinstance(v, (list, tuple)) or (nonempty and not v):
        raise ctx.err(path, f"expected a {'non-empty ' if nonempty else ''}list, got {_show(v)}")
    out: list = []
    for i, x in enumerate(v):
        x = item(x, f"{path}[{i}]")
        if x in out:
            raise ctx.err(f"{path}[{i}]", f"{_show(x)} is listed twice (also {path}[{out.index(x)}])")
        out.append(x)
    return tuple(out)


def _param_value(ctx: _Ctx, v: Any, path: str) -> Any:
    """Method overrides are JSON scalars or flat lists of them (e.g. a WiSE-FT alpha grid)."""
    def scalar(x: Any, p: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, numbers.Integral):
            return int(x)
        return _num(ctx, x, p, "a number, string, boolean, null or a list of those", lambda _: True)

    if isinstance(v, (list, tuple)):
        return tuple(scalar(x, f"{path}[{i}]") for i, x in enumerate(v))
    return scalar(v, path)


Check = Callable[[_Ctx, Any, str], Any]


def _fill(ctx: _Ctx, raw: Mapping[str, Any], path: str, checks: dict[str, Check]) -> dict[str, Any]:
    """Validated values of the keys present in ``raw``; absent keys keep their dataclass default (one source)."""
    return {key: check(ctx, raw[key], _join(path, key)) for key, check in checks.items() if key in raw}


def _positive(ctx: _Ctx, v: Any, p: str) -> float:
    return _num(ctx, v, p, "a number > 0", lambda x: x > 0)


def _name(what: str) -> Check:
    return lambda ctx, v, p: _str(ctx, v, p, f"a {what} name")


def _int_at_least(minimum: int) -> Check:
    return lambda ctx, v, p: _int(ctx, v, p, minimum)


def _one_of(allowed: tuple[str, ...]) -> Check:
    return lambda ctx, v, p: _choice(ctx, v, p, allowed)


def _or_null(check: Check) -> Check:
    return lambda ctx, v, p: None if v is None else check(ctx, v, p)


def _task_name(ctx: _Ctx, v: Any, p: str) -> str:
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        raise ctx.err(p, f"expected a name matching {NAME_RE.pattern} (lower-case letters, digits, '.', '_', '-'), "
                         f"got {_show(v)}")
    return v


def _text(ctx: _Ctx, v: Any, p: str) -> str:
    if not isinstance(v, str):
        raise ctx.err(p, f"expected a string, got {_show(v)}")
    return v


def _flag(ctx: _Ctx, v: Any, p: str) -> bool:
    if not isinstance(v, bool):
        raise ctx.err(p, f"expected true or false, got {_show(v)}")
    return v


def _seed(ctx: _Ctx, v: Any, p: str) -> int:
    # numpy and torch both accept seeds in [0, 2**32); anything else would not reproduce everywhere
    return _int(ctx, v, p, 0, 2**32 - 1)


def _build(ctx: _Ctx, d: Any) -> TaskSpec:
    top = _section(ctx, d, "", TaskSpec, ("name", "version", "model", "evaluate", "train", "seeds"))
    in_sequence = top.get("sequence") is not None
    if not in_sequence and "finetune" not in top:
        raise ctx.err("finetune", "missing required field")
    kw = _fill(ctx, top, "", {"name": _task_name, "version": _int_at_least(1), "description": _text,
                              "model": _name("model")})
    kw["finetune"] = _build_finetune(ctx, top.get("finetune", {}), in_sequence)
    if in_sequence:
        kw["sequence"] = _build_sequence(ctx, top["sequence"])
        trained = {n: "is fine-tuned on in the sequence" for n in kw["sequence"].finetune_datasets()}
    else:
        trained = {kw["finetune"].dataset: "is the fine-tune dataset (finetune.dataset)"}
    kw["evaluate"] = _build_eval(ctx, top["evaluate"], trained, in_sequence,
                                 allow_empty=in_sequence or kw["finetune"].seen_classes is not None)
    kw["train"] = _build_train(ctx, top["train"])
    if "methods" in top:
        kw["methods"] = _list(ctx, top["methods"], "methods", lambda v, p: _str(ctx, v, p, "a method name"))
    params: dict[str, Mapping[str, Any]] = {}
    for method, overrides in _section(ctx, top.get("method_params", {}), "method_params", None, ()).items():
        path = _join("method_params", method)
        _str(ctx, method, path, "a method name")
        overrides = _section(ctx, overrides, path, None, ())
        params[method] = MappingProxyType({k: _param_value(ctx, v, _join(path, k)) for k, v in overrides.items()})
    kw["method_params"] = MappingProxyType(params)
    kw["seeds"] = _list(ctx, top["seeds"], "seeds", lambda v, p: _seed(ctx, v, p))
    if top.get("targets") is not None:
        kw["targets"] = _list(ctx, top["targets"], "targets", lambda v, p: _build_target(ctx, v, p))
    return TaskSpec(**kw, source=ctx.source, lines=MappingProxyType(dict(ctx.lines)))


def _build_target(ctx: _Ctx, value: Any, path: str) -> PaperTarget:
    t = _section(ctx, value, path, PaperTarget, ("paper", "metric"))
    return PaperTarget(**_fill(ctx, t, path, {
        "paper": lambda ctx, v, p: _str(ctx, v, p, "the paper and table, as text"),
        "metric": lambda ctx, v, p: _str(ctx, v, p, "what the number measures, as text"),
        "method": _or_null(_name("method")),
        "value": _or_null(lambda ctx, v, p: _num(ctx, v, p, "a number or null", lambda _: True)),
        "note": _text,
    }))


def _build_finetune(ctx: _Ctx, value: Any, in_sequence: bool) -> FinetuneSpec:
    ft = _section(ctx, value, "finetune", FinetuneSpec, () if in_sequence else ("dataset",))

    def seen_classes(ctx: _Ctx, v: Any, p: str) -> tuple[str, ...]:
        names = _list(ctx, v, p, lambda x, q: _str(ctx, x, q, "a class name"))
        if len(names) < 2:  # the average logit gap needs a non-ground-truth seen class
            raise ctx.err(p, f"expected at least two seen classes, got {len(names)}")
        return names

    kw = _fill(ctx, ft, "finetune", {"dataset": _or_null(_name("dataset")) if in_sequence else _name("dataset"),
                                     "train_split": _name("split"), "val_split": _name("split"),
                                     "test_split": _name("split"), "seen_classes": _or_null(seen_classes)})
    for key in ("dataset", "seen_classes", "subset"):
        if in_sequence and ft.get(key) is not None:
            raise ctx.err(f"finetune.{key}", "a sequence task names its datasets in sequence; its finetune section "
                                             "may only set train_split, val_split and test_split")
    if ft.get("subset") is not None:
        roles = [kw.get(f"{r}_split", getattr(FinetuneSpec, f"{r}_split")) for r in ("train", "val", "test")]
        sizes = _section(ctx, ft["subset"], "finetune.subset", None, ())
        for split, n in sizes.items():
            if split not in roles:
                raise ctx.err(_join("finetune.subset", split), f"not one of the task's splits ({', '.join(roles)})"
                                                               f"{_hint(split, roles)}")
            _int(ctx, n, _join("finetune.subset", split), 1)
        kw["subset"] = MappingProxyType({k: int(v) for k, v in sizes.items()})
    return FinetuneSpec(**kw)


def _build_sequence(ctx: _Ctx, value: Any) -> SequenceSpec:
    sq = _section(ctx, value, "sequence", SequenceSpec, ())
    kw = _fill(ctx, sq, "sequence", {
        "datasets": _or_null(lambda ctx, v, p: _list(ctx, v, p, lambda x, q: _str(ctx, x, q, "a dataset name"))),
        "reference": _one_of(REFERENCES),
        "accuracy": lambda ctx, v, p: _list(ctx, v, p, lambda x, q: _choice(ctx, x, q, SEQUENCE_ACCURACIES)),
    })
    if sq.get("split") is not None:
        sp = _section(ctx, sq["split"], "sequence.split", ClassSplitSpec, ("dataset", "tasks"))
        kw["split"] = ClassSplitSpec(**_fill(ctx, sp, "sequence.split", {
            "dataset": _name("dataset"), "tasks": _int_at_least(1), "class_order_seed": _or_null(_seed)}))
    if (kw.get("datasets") is None) == (kw.get("split") is None):
        raise ctx.err("sequence", "give exactly one of sequence.datasets (one step per dataset) and sequence.split "
                                  "(class groups of one dataset: {dataset, tasks, class_order_seed})")
    return SequenceSpec(**kw)


def _build_eval(ctx: _Ctx, value: Any, trained: Mapping[str, str], in_sequence: bool, allow_empty: bool) -> EvalSpec:
    ev = _section(ctx, value, "evaluate", EvalSpec, ("datasets",))

    def held_out(v: Any, p: str) -> str:
        v = _str(ctx, v, p, "a dataset name")
        if v in trained:
            raise ctx.err(p, f"{v!r} {trained[v]}; held-out datasets must differ")
        return v

    kw: dict[str, Any] = {"datasets": _list(ctx, ev["datasets"], "evaluate.datasets", held_out,
                                            nonempty=not allow_empty)}
    if in_sequence:  # per-step evaluation measures accuracy only (the cheap part); say so rather than ignore
        for key, unset in (("drift", []), ("checkpoints", 0)):
            if key in ev and ev[key] not in (unset, None):
                raise ctx.err(f"evaluate.{key}", f"not supported in a sequence task (each step is evaluated by "
                                                 f"sequence.accuracy); remove it or set it to {unset}")
    path = "evaluate.linear_probe"
    lp = _section(ctx, ev.get("linear_probe", {}), path, LinearProbeSpec, ())
    kw["linear_probe"] = LinearProbeSpec(**_fill(ctx, lp, path, {
        "C_grid": lambda ctx, v, p: _list(ctx, v, p, lambda x, q: _positive(ctx, x, q)),
        "max_iter": _int_at_least(1),
    }))
    kw.update(_fill(ctx, ev, "evaluate", {
        "zero_shot": _flag,
        "drift": lambda ctx, v, p: _list(ctx, v, p, lambda x, q: _choice(ctx, x, q, DRIFTS), nonempty=False),
        "checkpoints": _int_at_least(0),
    }))
    return EvalSpec(**kw)


def _build_train(ctx: _Ctx, value: Any) -> TrainSpec:
    tr = _section(ctx, value, "train", TrainSpec, ("lr", "batch_size"))
    kw = _fill(ctx, tr, "train", {
        "optimizer": _one_of(OPTIMIZERS),
        "lr": _positive,
        "weight_decay": lambda ctx, v, p: _num(ctx, v, p, "a number >= 0", lambda x: x >= 0),
        "batch_size": _int_at_least(1),
        "epochs": _or_null(_int_at_least(0)),
        "steps": _or_null(_int_at_least(0)),
        "warmup_steps": _int_at_least(0),
        "schedule": _one_of(SCHEDULES),
        "grad_clip": _or_null(lambda ctx, v, p: _num(ctx, v, p, "a number > 0 or null", lambda x: x > 0)),
        "head_init": _one_of(HEAD_INITS),
        "label_smoothing": lambda ctx, v, p: _num(ctx, v, p, "a number in [0, 1)", lambda x: 0 <= x < 1),
        "batchnorm": _or_null(_one_of(BATCHNORM)),
    })
    # null counts as absent so that to_dict() output (which carries both keys) loads again
    if kw.get("epochs") is None and kw.get("steps") is None:
        raise ctx.err("train.epochs", "missing required field: give exactly one of train.epochs or train.steps")
    if kw.get("epochs") is not None and kw.get("steps") is not None:
        raise ctx.err("train.steps", "give exactly one of train.epochs or train.steps, not both")
    return TrainSpec(**kw)


# ----------------------------------------------------------------------------------------------- YAML


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
            sub = _join(path, key.value)
            if key.value in keys:  # PyYAML would silently keep the last one
                raise SpecError(f"{source}:{key.start_mark.line + 1}: {sub}: duplicate key")
            keys.add(key.value)
            lines[sub] = key.start_mark.line + 1
            _record_lines(value, sub, lines, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{path}[{i}]"] = item.start_mark.line + 1
            _record_lines(item, f"{path}[{i}]", lines, source, seen)


def _parse(text: str, source: str) -> tuple[Any, dict[str, int]]:
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
    data, lines = _parse(text, source)
    if data is None:
        raise SpecError(f"{source}: the task file is empty (expected a mapping with name, version, model, ...)")
    return TaskSpec.from_dict(data, source, lines=lines)


def _load_file(path: Path, source: str) -> TaskSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{source}: no such task file") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SpecError(f"{source}: cannot read task file ({e.strerror or e})") from None
    spec = load_task_text(text, source)
    # inside a task directory the file name is the task's name: `forgetbench run mini-shapes` must find it
    if path.resolve().parent in {d.resolve() for d in tasks_dirs()} and spec.name != path.stem:
        raise SpecError(f"{_prefix(source, spec.lines, 'name')}: name: {spec.name!r} does not match the file name "
                        f"{path.name!r} (tasks in a task directory must be named after their file: {path.stem!r})")
    return spec


# ----------------------------------------------------------------------------------------------- lookup


def tasks_dirs() -> list[Path]:
    """The directories searched for ``*.yaml`` tasks: the project's ``tasks/``, then ``$FORGETBENCH_TASKS_PATH``."""
    dirs = [_PACKAGE_TASKS]
    for entry in os.environ.get(ENV_TASKS_PATH, "").split(os.pathsep):
        if entry.strip():
            d = Path(entry).expanduser()
            if d not in dirs:
                dirs.append(d)
    return dirs


class _TaskRegistry(Registry):
    """Task name -> YAML path, rescanned whenever ``tasks_dirs()`` changes (e.g. the env var is set later)."""

    def __init__(self) -> None:
        super().__init__("task")
        self._scanned: list[Path] | None = None
        self._found: list[str] = []

    def _load(self) -> None:
        dirs = tasks_dirs()
        if dirs != self._scanned:
            for name in self._found:  # keep anything registered by hand
                self._items.pop(name, None)
            self._found = []
            self.add_loader(lambda: self._scan(dirs))
        super()._load()

    def _scan(self, dirs: list[Path]) -> None:
        where: dict[str, Path] = {}
        for d in dirs:
            if not d.is_dir():
                if d == _PACKAGE_TASKS:  # an installed package has no tasks/ next to it
                    continue
                raise SpecError(f"{ENV_TASKS_PATH}: {str(d)!r} is not a directory (expected directories of task "
                                f"YAML files, separated by {os.pathsep!r})")
            for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
                if path.stem in where:
                    raise SpecError(f"{path}: task {path.stem!r} is also defined in {where[path.stem]}; "
                                    "rename one of them")
                where[path.stem] = path
        for name, path in where.items():
            self.register(name, path)
            self._found.append(name)
        self._scanned = dirs  # only after success, so a failed scan is retried (and fails loudly) next time


#: Every task found in ``tasks_dirs()``, by name; entries are paths, parsed by ``load_task``.
TASKS: Registry = _TaskRegistry()


def _looks_like_path(s: str) -> bool:
    return s.endswith((".yaml", ".yml")) or os.sep in s or bool(os.altsep and os.altsep in s)


def load_task(name_or_path: str) -> TaskSpec:
    """Load a task by registry name (``mini-shapes``) or by path (``my/task.yaml``), validated.

    Raises ``UnknownNameError`` (with suggestions) for an unknown name and ``SpecError`` for a bad file.
    """
    if _looks_like_path(name_or_path):
        return _load_file(Path(name_or_path).expanduser(), name_or_path)
    path = TASKS.get(name_or_path)
    return _load_file(Path(path), str(path))


def check_names(spec: TaskSpec, datasets: Any, models: Any, methods: Any) -> None:
    """Check every name in ``spec`` exists in its registry, and the method overrides are accepted.

    Unknown names raise ``UnknownNameError`` with the registry's suggestions, prefixed by the spec's source and the
    field; a method's ``check_params(params)`` (when it has one) raises ``SpecError``, prefixed the same way.
    """
    checks: list[tuple[str, str, Any]] = [("model", spec.model, models)]
    if spec.sequence is None:
        checks.append(("finetune.dataset", spec.finetune.dataset, datasets))
    elif spec.sequence.datasets is not None:
        checks += [(f"sequence.datasets[{i}]", d, datasets) for i, d in enumerate(spec.sequence.datasets)]
    else:
        checks.append(("sequence.split.dataset", spec.sequence.split.dataset, datasets))
    checks += [(f"evaluate.datasets[{i}]", d, datasets) for i, d in enumerate(spec.evaluate.datasets)]
    checks += [(f"methods[{i}]", m, methods) for i, m in enumerate(spec.methods)]
    checks += [(_join("method_params", m), m, methods) for m in spec.method_params]
    for path, name, registry in checks:
        try:
            registry.get(name)
        except UnknownNameError as e:
            raise UnknownNameError(f"{_prefix(spec.source, spec.lines, path)}: {path}: {e}") from e
    if spec.finetune.seen_classes is not None:
        build = datasets.get(spec.finetune.dataset)
        classnames = getattr(build() if callable(build) else build, "classnames", None)
        if classnames is not None:  # a registry of dataset builders (not a stand-in): check the names now
            check_seen_classes(spec, classnames)
    for method in spec.method_params:
        check = getattr(methods.get(method), "check_params", None)
        if check is None:
            continue
        path = _join("method_params", method)
        try:
            check(spec.params_for(method))
        except SpecError as e:
            raise SpecError(f"{_prefix(spec.source, spec.lines, path)}: {path}: {e}") from e


def check_seen_classes(spec: TaskSpec, classnames: Any) -> list[int]:
    """Indices of ``finetune.seen_classes`` in the fine-tune dataset's class names; SpecError if a name is unknown or
    no class would be absent."""
    path = "finetune.seen_classes"
    names = list(classnames)
    out = []
    for i, name in enumerate(spec.finetune.seen_classes):
        if name not in names:
            where = f"{path}[{i}]"
            raise SpecError(f"{_prefix(spec.source, spec.lines, where)}: {where}: {name!r} is not a class of "
                            f"{spec.finetune.dataset!r}{_hint(name, names)} (its classes: {', '.join(names)})")
        out.append(names.index(name))
    if len(out) == len(names):
        raise SpecError(f"{_prefix(spec.source, spec.lines, path)}: {path}: every class of {spec.finetune.dataset!r} "
                        f"is listed, so none would be absent; leave some out")
    return out
