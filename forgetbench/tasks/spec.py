"""The task schema: a versioned fine-tune-then-measure-forgetting protocol, as typed, immutable data.

Each section is a dataclass whose fields declare how their YAML value is checked (``forgetbench.schema``). What a
protocol asks of a task beyond its types (a fine-tune dataset, or a sequence; held-out datasets that are not trained
on) is checked by the task's protocol (``forgetbench.protocols``), right after the fields are read.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import SpecError, UnknownNameError
from ..evaluate.drift_metrics import DRIFT_METRICS
from ..modes import MODES
from ..protocol import protocol_for
from ..schema import (INVALID, Choice, Custom, Flag, Integer, ListOf, MapOf, Nullable, Number, Problems, Section, Text,
                      entry, hint, internal, join, read, show, to_json)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
HEAD_INITS = ("zeroshot", "linear-probe")
BATCHNORM = ("frozen",)  # train.batchnorm: what BatchNorm layers do while fine-tuning (unset: batch statistics)
ANCHORS = ("previous", "original")  # what a sequence step's method regularises towards
SEQUENCE_ACCURACIES = ("zs", "lp")  # what fills a sequence's accuracy matrix
CLASS_TOKEN_POSITIONS = ("end",)  # where a learned prompt puts the class name (CoOp's default; "middle"/"front" not yet)
BASE_NEW_SPLITS = ("first-half",)  # how a dataset's classes are cut into base and new
#: The parts of a task that do not define the measurement: its name, its words, and its default methods and seeds.
#: ``tuning`` documents how ``train`` was chosen; the chosen values themselves are in ``train``.
#: The fields of ``train`` that choose a fine-tuning mode: an axis of the runs of a task, not of its measurement.
MODE_AXIS = ("mode", "peft")
NOT_PROTOCOL = ("name", "version", "description", "methods", "method_params", "seeds", "targets", "tuning")

_DATASET = Text("a dataset name")
_SPLIT = Text("a split name")
# numpy and torch both accept seeds in [0, 2**32); anything else would not reproduce everywhere
_SEED = Integer(0, 2**32 - 1)


def _param_value(v: Any, path: str, problems: Problems) -> Any:
    """Method overrides are JSON scalars or flat lists of them (e.g. a WiSE-FT alpha grid)."""
    def scalar(x: Any, p: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, numbers.Integral):
            return int(x)
        return Number(coerce=True, what="a number, string, boolean, null or a list of those")(x, p, problems)

    if isinstance(v, (list, tuple)):
        items = tuple(scalar(x, f"{path}[{i}]") for i, x in enumerate(v))
        return INVALID if any(x is INVALID for x in items) else items
    return scalar(v, path)


@dataclass(frozen=True, kw_only=True)
class FinetuneSpec:
    """The dataset the model is fine-tuned on, and which of its splits play which role.

    ``seen_classes`` (class names) selects the absent-class protocol: fine-tune on those classes only, evaluate over
    all of them. ``subset`` (split name -> images) uses a seeded sample of that many images of those splits of the
    fine-tune dataset (a protocol sized for a CPU; ``data.subsets.sample_subset``). A sequence task has no ``dataset``
    here (its datasets are in ``sequence``), only the split roles.
    """

    dataset: str | None = entry(Nullable(_DATASET), None, omit_if_none=True)
    train_split: str = entry(_SPLIT, "train")
    val_split: str = entry(_SPLIT, "val")
    test_split: str = entry(_SPLIT, "test")
    seen_classes: tuple[str, ...] | None = entry(Nullable(ListOf(Text("a class name"))), None, omit_if_none=True)
    subset: Mapping[str, int] | None = entry(Nullable(MapOf(Integer(ge=1))), None, omit_if_none=True)

    def check_fields(self, path: str, problems: Problems) -> None:
        for split in self.subset or {}:
            if split not in self.splits:
                problems.add(join(f"{path}.subset", split), f"not one of the task's splits "
                                                             f"({', '.join(self.splits)}){hint(split, self.splits)}")

    @property
    def splits(self) -> tuple[str, str, str]:
        """(train, validation, test) split names: what the linear probe fits on, selects C on and scores on."""
        return self.train_split, self.val_split, self.test_split


@dataclass(frozen=True, kw_only=True)
class ClassSplitSpec:
    """One dataset cut into ``tasks`` equal groups of classes (Split CIFAR-100 10x10), in a seeded class order."""

    dataset: str = entry(_DATASET)
    tasks: int = entry(Integer(ge=1))
    class_order_seed: int | None = entry(Nullable(_SEED), 0)  # null: the dataset's own class order


@dataclass(frozen=True, kw_only=True)
class SequenceSpec:
    """Continual fine-tuning: steps run in order, each starting from the previous step's encoder.

    Exactly one of ``datasets`` (one step per dataset) and ``split`` (class groups of one dataset). ``anchor`` (key
    ``reference`` in task files) is the frozen model a step's method regularises towards: the original model, or the
    previous step's result; ``accuracy`` says what fills the accuracy matrix R (zero-shot and/or the linear probe).
    """

    datasets: tuple[str, ...] | None = entry(Nullable(ListOf(_DATASET)), None, omit_if_none=True)
    split: ClassSplitSpec | None = entry(Nullable(Section(ClassSplitSpec)), None, omit_if_none=True)
    anchor: str = entry(Choice(ANCHORS), "previous", key="reference")
    accuracy: tuple[str, ...] = entry(ListOf(Choice(SEQUENCE_ACCURACIES)), SEQUENCE_ACCURACIES)
    # the learning rate of some steps, by dataset (MTIL's Aircraft and MNIST); the others use train.lr
    lr: Mapping[str, float] | None = entry(Nullable(MapOf(Number(gt=0, coerce=True), key=_DATASET)), None,
                                           omit_if_none=True)

    def finetune_datasets(self) -> tuple[str, ...]:
        """The registered datasets the steps fine-tune on."""
        return self.datasets if self.datasets is not None else (self.split.dataset,)

    def step_train(self, step: int, train: TrainSpec) -> TrainSpec:
        """The training hyper-parameters of step ``step`` (0-based): ``train``, with its own learning rate if set."""
        if self.lr is None or self.datasets is None or self.datasets[step] not in self.lr:
            return train
        return dataclasses.replace(train, lr=self.lr[self.datasets[step]])

    def check_fields(self, path: str, problems: Problems) -> None:
        if (self.datasets is None) == (self.split is None):
            problems.add(path, "give exactly one of sequence.datasets (one step per dataset) and sequence.split "
                               "(class groups of one dataset: {dataset, tasks, class_order_seed})")
        for name in self.lr or {}:
            if self.datasets is None:
                problems.add(f"{path}.lr", "per-step learning rates need sequence.datasets (one step per dataset)")
                break
            if name not in self.datasets:
                problems.add(join(f"{path}.lr", name), f"not a dataset of sequence.datasets"
                                                       f"{hint(name, self.datasets)}")


@dataclass(frozen=True, kw_only=True)
class PromptTuningSpec:
    """Few-shot prompt tuning, base-to-new (CoOp / CoCoOp): per dataset, learn ``context_tokens`` context vectors in
    front of the class name ("[ctx_1] ... [ctx_M] [class]."), both towers frozen, on ``shots`` training images per
    base class (sampled by the seed); score base and new classes of the test split, each among its own half.

    ``split`` "first-half": base classes are the first ceil(C/2) by class index, new the rest (CoOp's rule).
    ``context_init``: the words the context starts from (their token count must be ``context_tokens``), or null for
    random vectors (normal, std 0.02, seeded). ``epochs`` overrides ``train.epochs`` for some datasets (CoOp trains
    ImageNet 50 epochs, the others 200)."""

    datasets: tuple[str, ...] = entry(ListOf(_DATASET))
    shots: int = entry(Integer(ge=1), 16)
    context_tokens: int = entry(Integer(ge=1), 4)
    context_init: str | None = entry(Nullable(Text("words such as 'a photo of a'")), "a photo of a")
    class_token_position: str = entry(Choice(CLASS_TOKEN_POSITIONS), "end")
    split: str = entry(Choice(BASE_NEW_SPLITS), "first-half")
    epochs: Mapping[str, int] | None = entry(Nullable(MapOf(Integer(ge=1), key=_DATASET)), None, omit_if_none=True)

    def check_fields(self, path: str, problems: Problems) -> None:
        for name in self.epochs or {}:
            if name not in self.datasets:
                problems.add(join(f"{path}.epochs", name), f"not a dataset of {path}.datasets"
                                                            f"{hint(name, self.datasets)}")


@dataclass(frozen=True, kw_only=True)
class LinearProbeSpec:
    """The fixed linear-probe protocol: logistic regression, C chosen on the grid by validation accuracy."""

    C_grid: tuple[float, ...] = entry(ListOf(Number(gt=0, coerce=True)), (0.1, 1.0, 10.0, 100.0))
    max_iter: int = entry(Integer(ge=1), 1000)


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """What is measured on the held-out datasets."""

    datasets: tuple[str, ...] = entry(ListOf(_DATASET, nonempty=False))
    linear_probe: LinearProbeSpec = entry(Section(LinearProbeSpec), LinearProbeSpec())
    zero_shot: bool = entry(Flag(), True)  # skipped automatically for models without a text tower
    drift: tuple[str, ...] = entry(ListOf(Choice(lambda: [m.name for m in DRIFT_METRICS.entries()]), nonempty=False),
                                   ())
    checkpoints: int = entry(Integer(ge=0), 0)  # intermediate checkpoints to evaluate; 0 = only the final model


@dataclass(frozen=True, kw_only=True)
class PeftSpec:
    """The settings of the parameter-efficient modes (``forgetbench.modes``); each has a default there."""

    lora_rank: int | None = entry(Nullable(Integer(ge=1)), None, omit_if_none=True)
    lora_alpha: float | None = entry(Nullable(Number(gt=0, coerce=True)), None, omit_if_none=True)
    vpt_tokens: int | None = entry(Nullable(Integer(ge=1)), None, omit_if_none=True)
    vpt_deep: bool | None = entry(Nullable(Flag()), None, omit_if_none=True)  # tokens at every block, not input only
    adapter_dim: int | None = entry(Nullable(Integer(ge=1)), None, omit_if_none=True)
    vqt_tokens: int | None = entry(Nullable(Integer(ge=1)), None, omit_if_none=True)


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Fine-tuning hyper-parameters. Exactly one of ``epochs`` / ``steps`` is set."""

    optimizer: str = entry(Choice(OPTIMIZERS), "adamw")
    lr: float = entry(Number(gt=0, coerce=True))
    weight_decay: float = entry(Number(ge=0, coerce=True), 0.0)
    batch_size: int = entry(Integer(ge=1))
    epochs: int | None = entry(Nullable(Integer(ge=0)), None)
    steps: int | None = entry(Nullable(Integer(ge=0)), None)
    warmup_steps: int = entry(Integer(ge=0), 0)
    schedule: str = entry(Choice(SCHEDULES), "cosine")
    grad_clip: float | None = entry(Nullable(Number(gt=0, coerce=True)), None)
    head_init: str = entry(Choice(HEAD_INITS), "zeroshot")
    label_smoothing: float = entry(Number(ge=0, lt=1, coerce=True), 0.0)
    # "frozen": BatchNorm layers normalise with their pre-trained running statistics and keep them (their scale and
    # shift still train); unset: they use and update batch statistics, as in training from scratch. Models without
    # BatchNorm (ViTs) are the same either way.
    batchnorm: str | None = entry(Nullable(Choice(BATCHNORM)), None, omit_if_none=True)
    # which encoder parameters train (forgetbench.modes; unset: full), and the settings of the modes. An axis of the
    # run, like the seed: part of a record's identity (run id), not of the measurement a task version fixes
    mode: str | None = entry(Nullable(Choice(MODES)), None, omit_if_none=True)
    peft: PeftSpec | None = entry(Nullable(Section(PeftSpec)), None, omit_if_none=True)

    def check_fields(self, path: str, problems: Problems) -> None:
        # null counts as absent so that to_dict() output (which carries both keys) loads again
        if self.epochs is None and self.steps is None:
            problems.add(f"{path}.epochs", "missing required field: give exactly one of train.epochs or train.steps")
        elif self.epochs is not None and self.steps is not None:
            problems.add(f"{path}.steps", "give exactly one of train.epochs or train.steps, not both")


#: A target's measured quantity: a dotted path (``summary.delta_lp_mean``, ``zs.pretrained.avg``), or the difference of
#: two (``absent.ausuc - absent.reference.ausuc``); ``forgetbench.reproduce.measures`` says what each path reads.
METRIC_RE = re.compile(r"[A-Za-z0-9_/.-]+( - [A-Za-z0-9_/.-]+)?")
CLAIMS = ("> 0", "< 0")  # the direction a paper reports where it gives no number


@dataclass(frozen=True, kw_only=True)
class PaperTarget:
    """A published number the task reproduces (a line of the reproduction ledger): the paper, its table or figure and
    row, the method, the measured quantity it compares with, the value and where that value was read.

    ``value`` null: no published number was found; then ``claim`` may state the direction the paper reports (the
    measured quantity is ``> 0`` or ``< 0``), which the ledger checks instead of a tolerance.
    """

    paper: str = entry(Text("the paper, as text"))  # e.g. "Proxy-FDA (Huang et al., ICML 2025)"
    table: str = entry(Text("the table or figure, as text"))  # e.g. "Table 1", "Fig. 3"
    row: str = entry(Text("a string", allow_empty=True), "")  # the row (or series) as the paper labels it
    method: str | None = entry(Nullable(Text("a method name")), None)  # null: the pre-trained model (or all methods)
    metric: str = entry(Text("a metric path such as summary.delta_lp_mean, or 'A - B'", pattern=METRIC_RE))
    value: float | None = entry(Nullable(Number(coerce=True, what="a number")), None)  # null: no published value
    claim: str | None = entry(Nullable(Choice(CLAIMS)), None, omit_if_none=True)
    source: str = entry(Text("where the value was read, as text"))
    note: str = entry(Text("a string", allow_empty=True), "")

    def check_fields(self, path: str, problems: Problems) -> None:
        if self.claim is not None and self.value is not None:
            problems.add(join(path, "claim"), "a target has a published value or a claim about its direction, not "
                                              "both; remove one")


#: Train fields a tuning grid may vary (the numeric ones).
TUNABLE = ("lr", "weight_decay", "batch_size", "epochs", "steps", "warmup_steps", "grad_clip", "label_smoothing")


def _tunable(key: Any, path: str, problems: Problems) -> Any:
    if key not in TUNABLE:
        return problems.add(path, f"not a train field a grid can vary{hint(key, TUNABLE)} (accepted: "
                                  f"{', '.join(TUNABLE)})")
    return key


@dataclass(frozen=True, kw_only=True)
class TuningSpec:
    """How the task's training hyper-parameters were chosen: ``method`` fine-tuned at every point of ``grid`` (train
    fields -> values tried) with ``seeds``; ``val_acc`` holds each point's mean target validation accuracy and ``rule``
    says in words how they decided (``bench/tune_protocol.py`` reproduces it). The chosen values are in ``train``."""

    method: str = entry(Text("a method name"), "ft")
    seeds: tuple[int, ...] = entry(ListOf(_SEED))
    rule: str = entry(Text("the selection rule, in words"))
    grid: Mapping[str, tuple[float, ...]] = entry(MapOf(ListOf(Number(gt=0, coerce=True)), key=Custom(_tunable)))
    # one entry per grid point: its value of every grid field, and its validation accuracy "acc"
    val_acc: tuple[Mapping[str, float], ...] = entry(ListOf(MapOf(Number(ge=0, coerce=True))))

    def check_against(self, train: TrainSpec, path: str, problems: Problems) -> None:
        """The grid holds ``train``'s chosen values, and ``val_acc`` has one entry per grid point."""
        for key, values in self.grid.items():
            if getattr(train, key) not in values:
                problems.add(f"{path}.grid.{key}", f"train.{key} is {show(getattr(train, key))}, which is not among "
                                                   f"the values tried")
        if not self.grid:
            problems.add(f"{path}.grid", "expected at least one train field with the values tried, e.g. "
                                         "{lr: [1e-4, 3e-4]}")
            return
        seen: dict[tuple, int] = {}
        for i, point in enumerate(self.val_acc):
            at = f"{path}.val_acc[{i}]"
            missing = [k for k in (*self.grid, "acc") if k not in point]
            for key in point:
                if key == "acc":
                    if point[key] > 100:
                        problems.add(join(at, key), f"expected an accuracy in [0, 100], got {show(point[key])}")
                elif key not in self.grid:
                    problems.add(join(at, key), f"is not a field of {path}.grid ({', '.join(self.grid)}, acc)")
                elif point[key] not in self.grid[key]:
                    problems.add(join(at, key), f"{show(point[key])} is not among {path}.grid.{key}'s values")
            for key in missing:
                problems.add(join(at, key), "missing required field")
            if missing:
                continue
            values = tuple(point[k] for k in self.grid)
            if values in seen:
                problems.add(at, f"the grid point {dict(zip(self.grid, values))} is also "
                                 f"{path}.val_acc[{seen[values]}]")
            seen[values] = i
        points = math.prod(len(v) for v in self.grid.values())
        if len(self.val_acc) != points:
            problems.add(f"{path}.val_acc", f"has {len(self.val_acc)} entries for a grid of {points} points (one entry "
                                            f"per point)")


@dataclass(frozen=True, kw_only=True)
class SelectionSpec:
    """How a method's leaderboard setting is chosen from its strength sweep, without reading a test metric: per
    method, the strongest setting of its grid (the one that moves the model least) whose mean target validation
    accuracy is within ``within`` points of ``reference``'s (at the task's training hyper-parameters); its test
    numbers, over ``seeds`` seeds, are the method's row ("ΔLP at matched gain"). A task with this section fits the
    linear-probe head a fine-tune starts from on the training split only, so that the validation labels stay unseen
    until the selection reads them."""

    reference: str = entry(Text("a method name"), "ft")
    within: float = entry(Number(ge=0, coerce=True), 1.0)
    seeds: int = entry(Integer(ge=1), 5)


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One validated task. Build it with ``from_dict`` or ``load_task``; ``to_dict`` gives the resolved record form.

    ``protocol`` names the task's protocol when it is not the one its sections imply (``forgetbench.protocols``).
    ``source`` (where it came from) and ``lines`` (dotted field path -> line in that file) only serve error
    messages; they take no part in equality or ``to_dict``.
    """

    name: str = entry(Text(f"a name matching {NAME_RE.pattern} (lower-case letters, digits, '.', '_', '-')",
                           pattern=NAME_RE))
    version: int = entry(Integer(ge=1))
    description: str = entry(Text("a string", allow_empty=True), "")
    model: str = entry(Text("a model name"))
    protocol: str | None = entry(Nullable(Text("a protocol name")), None, omit_if_none=True)
    finetune: FinetuneSpec = entry(Section(FinetuneSpec), FinetuneSpec())
    sequence: SequenceSpec | None = entry(Nullable(Section(SequenceSpec)), None, omit_if_none=True)
    prompt_tuning: PromptTuningSpec | None = entry(Nullable(Section(PromptTuningSpec)), None, omit_if_none=True)
    evaluate: EvalSpec = entry(Section(EvalSpec))
    train: TrainSpec = entry(Section(TrainSpec))
    methods: tuple[str, ...] = entry(ListOf(Text("a method name")), ("ft",))
    method_params: Mapping[str, Mapping[str, Any]] = entry(
        MapOf(MapOf(Custom(_param_value)), key=Text("a method name")), factory=lambda: MappingProxyType({}))
    seeds: tuple[int, ...] = entry(ListOf(_SEED))
    targets: tuple[PaperTarget, ...] | None = entry(Nullable(ListOf(Section(PaperTarget))), None, omit_if_none=True)
    tuning: TuningSpec | None = entry(Nullable(Section(TuningSpec)), None, omit_if_none=True)  # where train came from
    selection: SelectionSpec | None = entry(Nullable(Section(SelectionSpec)), None, omit_if_none=True)
    source: str = internal("<dict>")
    lines: Mapping[str, int] = internal(factory=dict)

    def check_fields(self, path: str, problems: Problems) -> None:
        """What the task's protocol asks of it beyond the types of its fields."""
        if self.tuning is not None:
            self.tuning.check_against(self.train, "tuning", problems)
        try:
            protocol = protocol_for(self)
        except UnknownNameError as e:
            problems.add("protocol", str(e))
            return
        protocol.check_task(self, problems)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved spec (every default filled in) as plain JSON types, for result records."""
        return to_json(self)

    def measurement(self) -> dict[str, Any]:
        """The resolved sections that define what is measured (not the task's name, default methods or seeds)."""
        out = {k: v for k, v in self.to_dict().items() if k not in NOT_PROTOCOL}
        out["train"] = {k: v for k, v in out["train"].items() if k not in MODE_AXIS}  # the mode: part of the run id
        return out

    def params_for(self, method: str) -> dict[str, Any]:
        """The task's overrides of ``method``'s hyper-parameters (empty when it has none), as plain types."""
        return to_json(self.method_params.get(method, {}))

    def where(self, path: str) -> str:
        """``file:line`` of ``path`` (or of its nearest parent that has a line), else the file alone."""
        return where(self.source, self.lines, path)

    def error(self, path: str, message: str) -> SpecError:
        """A one-line error about the field ``path`` of this task, at its file and line."""
        return spec_error(self.source, self.lines, path, message)

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>", *, lines: Mapping[str, int] | None = None) -> TaskSpec:
        """Validate a parsed spec; raise ``SpecError`` naming ``source`` (and the line, when ``lines`` has it)."""
        lines = MappingProxyType(dict(lines or {}))
        spec = read(cls, d, Problems(raise_at=lambda path, message: spec_error(source, lines, path, message)))
        return dataclasses.replace(spec, source=source, lines=lines)


def where(source: str, lines: Mapping[str, int], path: str) -> str:
    """``source:line`` of ``path`` (or of its nearest parent that has a line), else ``source`` alone."""
    line = line_of(lines, path)
    return f"{source}:{line}" if line is not None else source


def spec_error(source: str, lines: Mapping[str, int], path: str, message: str) -> SpecError:
    at = where(source, lines, path)
    return SpecError(f"{at}: {path}: {message}" if path else f"{at}: {message}")


def line_of(lines: Mapping[str, int], path: str) -> int | None:
    """Line of ``path``, else of its nearest recorded parent (a missing key is reported at its section)."""
    if path in lines:
        return lines[path]
    for i in range(len(path) - 1, 0, -1):  # cut before each '.' or '[' (longest parent first)
        if path[i] in ".[" and path[:i] in lines:
            return lines[path[:i]]
    return None


