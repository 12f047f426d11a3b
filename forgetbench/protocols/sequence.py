"""Continual fine-tuning: a task's sequence of fine-tunes, one record (``forgetbench.sequence/1``) per (task, method,
seed).

Each step starts from the previous step's encoder, gets a fresh head for its own classes (the task's head
initialisation, on the current encoder) and a fresh instance of the method, whose frozen anchor is the original model
or the previous step's result (``sequence.reference``: the anchor). After every step every dataset of the sequence and
every held-out dataset is evaluated by ``sequence.accuracy`` (zero-shot through the frozen text tower, as MTIL, and/or
the task's linear probe) -- accuracy only, so a long sequence stays cheap. The record holds the accuracy matrix
R[t, j], the held-out matrix H[t, k], the pre-trained model's rows and the metrics of ``evaluate/sequences.py``.

A step of a class-split sequence is a view of its dataset restricted to its classes, relabelled 0..k-1, and is
evaluated among its own classes (task-incremental accuracy).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
from tqdm import tqdm

from ..data import get_dataset
from ..data.base import ImageDataset
from ..data.subsets import class_splits, class_subset
from ..errors import SpecError
from ..evaluate.evaluation import Evaluation, FrozenModel, frozen, require_splits
from ..evaluate.sequences import heldout_metrics, sequence_metrics
from ..features import extract
from ..heads import head_accuracy, initial_head
from ..methods import FinetuneContext
from ..evaluate.heldout import CONSISTENCY_TOL, PERCENT
from ..records.base import RunRecord
from ..report.board import Board, Column, build_board, fmt
from ..report.sequence_plots import KIND_NAMES, plot_sequence_heldout, plot_sequence_matrices
from ..schema import Choice, ListOf, MapOf, Number, Problems, Section, Text, entry, extras, join
from ..tasks.spec import ANCHORS, SEQUENCE_ACCURACIES
from ..train import finetune
from ..protocol import Protocol, register_protocol

_PERCENTS = ListOf(PERCENT, nonempty=False, distinct=False)
_MATRIX = ListOf(_PERCENTS, nonempty=False, distinct=False)


@dataclass(frozen=True, kw_only=True)
class StepInfo:
    name: str = entry(Text())
    classes: tuple[str, ...] = entry(ListOf(Text(), distinct=False))
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class SequenceInfo:
    """The steps in order with their classes, the held-out datasets, the anchor, and what fills R."""

    steps: tuple[StepInfo, ...] = entry(ListOf(Section(StepInfo), distinct=False))
    heldout: tuple[str, ...] = entry(ListOf(Text("a dataset name"), nonempty=False))
    anchor: str = entry(Choice(ANCHORS), key="reference")
    accuracy: tuple[str, ...] = entry(ListOf(Choice(SEQUENCE_ACCURACIES)))
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class SequenceAccuracy:
    """One kind of accuracy along the sequence: R (step t, dataset j), the held-out matrix, the pre-trained model's
    rows (``reference``, ``heldout_reference``) and the metrics the matrices give."""

    R: tuple[tuple[float, ...], ...] = entry(_MATRIX)
    reference: tuple[float, ...] = entry(_PERCENTS)
    heldout: tuple[tuple[float, ...], ...] = entry(_MATRIX)
    heldout_reference: tuple[float, ...] = entry(_PERCENTS)
    summary: Mapping[str, float] = entry(MapOf(Number()))
    extra: Mapping[str, Any] = extras()

    def problems(self, path: str, steps: int, heldout: int, problems: Problems) -> None:
        """The matrices have the sequence's shape, and the summary is what they give."""
        before = len(problems)
        for key, rows, cols in (("R", steps, steps), ("heldout", steps, heldout)):
            _length(getattr(self, key), rows, join(path, key), problems)
            for i, row in enumerate(getattr(self, key)):
                _length(row, cols, f"{join(path, key)}[{i}]", problems)
        _length(self.reference, steps, join(path, "reference"), problems)
        _length(self.heldout_reference, heldout, join(path, "heldout_reference"), problems)
        if len(problems) > before:
            return
        expected = {**sequence_metrics(self.R, self.reference), **heldout_metrics(self.heldout, self.heldout_reference)}
        for key, value in expected.items():
            at = join(join(path, "summary"), key)
            if key not in self.summary:
                problems.add(at, f"missing required field (the matrices give {value!r})")
            elif abs(self.summary[key] - value) > CONSISTENCY_TOL:
                problems.add(at, f"is {self.summary[key]!r} but the matrices give {value!r} (tolerance "
                                 f"{CONSISTENCY_TOL})")


def _length(values: tuple, n: int, path: str, problems: Problems) -> None:
    if len(values) != n:
        problems.add(path, f"expected a list of {n} accuracies, got {len(values)}")


@dataclass(frozen=True, kw_only=True)
class SequenceMetrics:
    target: tuple[float, ...] = entry(_PERCENTS)  # the fine-tuned head on each step's own test split
    zs: SequenceAccuracy | None = entry(Section(SequenceAccuracy), None, omit_if_none=True)
    lp: SequenceAccuracy | None = entry(Section(SequenceAccuracy), None, omit_if_none=True)
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class SequenceRecord(RunRecord):
    SCHEMA: ClassVar[str] = "forgetbench.sequence/1"

    sequence: SequenceInfo = entry(Section(SequenceInfo))
    metrics: SequenceMetrics = entry(Section(SequenceMetrics))

    def check_fields(self, path: str, problems: Problems) -> None:
        super().check_fields(path, problems)
        steps, heldout = len(self.sequence.steps), len(self.sequence.heldout)
        _length(self.metrics.target, steps, "metrics.target", problems)
        for kind in self.sequence.accuracy:
            accuracy = getattr(self.metrics, kind)
            if accuracy is None:
                problems.add(f"metrics.{kind}", "missing required field")
            else:
                accuracy.problems(f"metrics.{kind}", steps, heldout, problems)


def sequence_steps(task: Any) -> list[ImageDataset]:
    """The datasets the steps fine-tune on, in order (class-split steps are views of one dataset)."""
    seq = task.sequence
    if seq.datasets is not None:
        return [get_dataset(n) for n in seq.datasets]
    base = get_dataset(seq.split.dataset)
    groups = class_splits(base, seq.split.tasks, seq.split.class_order_seed)
    return [class_subset(base, g, relabel=True, name=f"{base.name}#{i + 1}") for i, g in enumerate(groups)]


def accuracy_kinds(task: Any, evaluation: Evaluation) -> tuple[str, ...]:
    """What fills R: the task's ``sequence.accuracy``, without zero-shot when it cannot be measured."""
    kinds = tuple(k for k in task.sequence.accuracy if k in evaluation.kinds)
    if not kinds:
        raise SpecError(f"task {task.name!r}: sequence.accuracy asks for zero-shot only, but model "
                        f"{evaluation.reference.model.name!r} has no text tower or evaluate.zero_shot is false; add lp "
                        f"to sequence.accuracy")
    return kinds


@register_protocol
class SequenceProtocol(Protocol):
    name = "sequence"
    description = "fine-tune on datasets in turn; the accuracy matrix and the continual-learning metrics"
    record_type = SequenceRecord
    figures = ("sequence",)

    # ----- tasks
    def claims(self, task: Any) -> bool:
        return task.sequence is not None

    def finetune_datasets(self, task: Any) -> list[tuple[str, str]]:
        seq = task.sequence
        if seq is None:
            return []
        if seq.datasets is not None:
            return [(f"sequence.datasets[{i}]", d) for i, d in enumerate(seq.datasets)]
        return [("sequence.split.dataset", seq.split.dataset)]

    def check_task(self, task: Any, problems: Problems) -> None:
        if task.sequence is None:
            problems.add("sequence", "missing required field")
        for key in ("dataset", "seen_classes", "subset"):
            if getattr(task.finetune, key) is not None:
                problems.add(f"finetune.{key}", "a sequence task names its datasets in sequence; its finetune section "
                                                "may only set train_split, val_split and test_split")
        # per-step evaluation measures accuracy only (the cheap part); say so rather than ignore
        for key, unset, shown in (("drift", (), "[]"), ("checkpoints", 0, "0")):
            if getattr(task.evaluate, key) != unset:
                problems.add(f"evaluate.{key}", f"not supported in a sequence task (each step is evaluated by "
                                                f"sequence.accuracy); remove it or set it to {shown}")
        if task.train.mode not in (None, "full"):  # each step would add the mode's modules again
            problems.add("train.mode", f"fine-tuning modes are not supported in a sequence task yet; remove it "
                                       f"(got {task.train.mode!r})")
        super().check_task(task, problems)

    def describe(self, task: Any) -> str:
        seq = task.sequence
        steps = ", ".join(seq.datasets) if seq.datasets is not None else \
            f"{seq.split.dataset} in {seq.split.tasks} class groups (order seed {seq.split.class_order_seed})"
        own_lr = "".join(f", lr {lr:g} for {name}" for name, lr in (seq.lr or {}).items())
        return f"sequence {steps} (anchor: {seq.anchor}{own_lr})"

    # ----- a run
    def run(self, request: Any) -> SequenceRecord:
        task, seed, device = request.task, request.seed, request.device
        t0 = time.time()
        steps = sequence_steps(task)
        heldout = [get_dataset(n) for n in task.evaluate.datasets]
        columns = steps + heldout
        require_splits(columns, task.finetune.splits)  # fail before any work, not after the first step
        reference = FrozenModel.load(task.model, device)
        evaluation = Evaluation(task.evaluate, task.finetune.splits, reference).prepare(columns)
        kinds = accuracy_kinds(task, evaluation)
        # with a linear probe, cached on disk and shared with single fine-tune tasks of the same protocol
        before = [evaluation.reference_accuracies(ds, kinds) for ds in columns]
        rows: dict[str, list[list[float]]] = {k: [] for k in kinds}
        target, n_steps, losses = [], [], []
        head_kind = request.method.head_init or task.train.head_init
        student, anchor = None, reference.model.visual  # the frozen model each step regularises towards
        finetune_s = evaluate_s = 0.0
        t1 = time.time()
        for t, step in enumerate(tqdm(steps, desc=f"sequence ({request.method.name})", unit="step", leave=False,
                                      disable=None if request.progress else True)):
            t_step = time.time()
            method = request.new_method()  # hooks keep per-fine-tune state: a fresh instance per step
            # the probe head is fitted on the encoder the step starts from (the original one, cached, at step 0)
            features = None if student is None else \
                (lambda ds, s, e=student: extract(e, reference.model, ds, s, device))
            head = initial_head(head_kind, evaluation, step, evaluation.class_embeddings(step), features)
            ctx = FinetuneContext.start(reference.model, method, head, task, step, device, student=student,
                                        frozen=anchor)
            student = ctx.student
            log = finetune(ctx, method, task.sequence.step_train(t, task.train),
                           step.split(task.finetune.train_split), seed, progress=request.progress)
            n_steps.append(log.steps)
            losses.append(log.final_loss)
            t_eval = time.time()
            finetune_s += t_eval - t_step
            tests = {}
            for k in kinds:
                rows[k].append([])
            for ds in columns:
                accs, tests[ds.name] = evaluation.accuracies(evaluation.encoder_features(student, ds), ds, kinds)
                for k in kinds:
                    rows[k][-1].append(accs[k])
            target.append(head_accuracy(ctx.head, *tests[step.name], device))
            evaluate_s += time.time() - t_eval
            if task.sequence.anchor == "previous":
                anchor = frozen(student)
        t2 = time.time()
        T = len(steps)
        accuracy = {}
        for k in kinds:
            R, H = np.array(rows[k])[:, :T], np.array(rows[k])[:, T:]
            b, hb = [acc[k] for acc in before[:T]], [acc[k] for acc in before[T:]]
            accuracy[k] = SequenceAccuracy(R=R.tolist(), reference=b, heldout=H.tolist(), heldout_reference=hb,
                                           summary={**sequence_metrics(R, b), **heldout_metrics(H, hb)})
        info = SequenceInfo(steps=tuple(StepInfo(name=s.name, classes=tuple(s.classnames)) for s in steps),
                            heldout=tuple(d.name for d in heldout), anchor=task.sequence.anchor, accuracy=kinds)
        timings = {"setup_s": t1 - t0, "finetune_s": finetune_s, "evaluate_s": evaluate_s, "total_s": t2 - t0}
        training = {"steps": n_steps, "final_loss": losses, "head_init": head_kind}
        return SequenceRecord(**request.record_fields(reference, timings, training), sequence=info,
                              metrics=SequenceMetrics(target=target, **accuracy))

    # ----- results
    def summary_line(self, record: SequenceRecord) -> str:
        kind = record.sequence.accuracy[0]
        s = getattr(record.metrics, kind).summary
        return (f"{kind} Avg {s['avg']:.1f}  Last {s['last']:.1f}"
                + (f"  Transfer {s['transfer']:.1f}  BWT {s['bwt']:+.1f}" if "bwt" in s else "")
                + (f"  held-out {s['heldout_delta_mean']:+.2f}" if "heldout_delta_mean" in s else ""))

    def board(self, task: str, version: int, records: list, older: str | None) -> Board:
        first = records[0].sequence
        kinds = [k for k in first.accuracy if all(getattr(r.metrics, k) is not None for r in records)]
        kind = kinds[0]
        steps = ", ".join(f"`{s.name}`" for s in first.steps)
        heldout = ", ".join(f"`{h}`" for h in first.heldout)
        pre = getattr(records[0].metrics, kind)
        note = (f"Sequence of {len(first.steps)} fine-tunes: {steps}; each step regularised towards the "
                f"{first.anchor} model. R is filled with {KIND_NAMES[kind]} accuracy (pre-trained: "
                f"{', '.join(fmt(x, digits=1) for x in pre.reference)})"
                + (f"; held out: {heldout} (pre-trained {', '.join(fmt(x, digits=1) for x in pre.heldout_reference)})"
                   if heldout else "")
                + ". Avg, Last, Transfer as in MTIL; BWT, FWT (against the pre-trained model), forgetting (Chaudhry); "
                "Held-out Δ: accuracy on the held-out datasets after the last step minus before the first. "
                "Rows are ranked by Avg.")
        if len(kinds) > 1:
            note += " The records also hold the matrices filled with " + ", ".join(kinds[1:]) + " accuracy."

        def stat(key: str):
            return lambda r: getattr(r.metrics, kind).summary.get(key)

        columns = [Column("Avg", stat("avg"), "mean_std"), Column("Last", stat("last"), "mean_std"),
                   Column("Transfer", stat("transfer"), "mean_std"), Column("BWT", stat("bwt"), "mean_signed"),
                   Column("FWT", stat("fwt"), "mean_signed"), Column("Forgetting", stat("forgetting"), "mean_std")]
        if heldout:
            columns += [Column("Held-out Δ", stat("heldout_delta_mean"), "mean_std_signed"),
                        Column("Worst held-out Δ", stat("heldout_delta_worst"), "mean_signed")]
        return build_board(task, version, records, older, note, columns, rank_by="Avg")

    def plot(self, kind: str, records: Iterable[RunRecord], out: Path, **options: Any) -> list[Path]:
        """Two figures: ``<out>-matrix`` (R per method) and, with held-out datasets, ``<out>-heldout``."""
        mine = [r for r in records if isinstance(r, SequenceRecord)]
        out = Path(out)
        paths = plot_sequence_matrices(mine, out.parent / f"{out.name}-matrix")
        if any(r.sequence.heldout for r in mine):
            paths += plot_sequence_heldout(mine, out.parent / f"{out.name}-heldout")
        return paths
