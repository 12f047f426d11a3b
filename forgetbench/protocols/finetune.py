"""The plain fine-tune: fine-tune on one dataset, measure what the held-out datasets lost (``forgetbench.result/1``).

One run: the frozen pre-trained model and a copy to fine-tune -> the method's hooks in the standard loop (with
resumable checkpoints, and held-out evaluation at ``evaluate.checkpoints`` steps along the way) -> the fine-tuned
encoder and head on the target's test split, every held-out dataset against the pre-trained model, weight drift ->
one record. Its leaderboard ranks by mean ΔLP; its figures are forgetting against drift and along training.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping

from ..data import get_dataset
from ..data.subsets import sample_subset
from ..evaluate.drift import encoder_weight_drift
from ..evaluate.drift_metrics import drift_metrics
from ..evaluate.evaluation import Evaluation, FrozenModel, percent, require_splits
from ..features import extract
from ..heads import head_correct, initial_head
from ..methods import FinetuneContext
from ..modes import finish as finish_mode
from ..models.weights_io import save_atomic
from ..evaluate.heldout import CONSISTENCY_TOL, PERCENT, POINTS, difference
from ..evaluate.per_image import PerImage, accuracy, block_problems, pack
from ..records.base import RunRecord
from ..evaluate.heldout import Checkpoint, HeldoutMetrics, summarize_heldout, summary_problems
from ..report.board import Board, Column, build_board
from ..report.matched import matched_or_none
from ..report.plots import plot_correlation, plot_trajectories
from ..report.tradeoff_plot import plot_tradeoff
from ..schema import Choice, ListOf, MapOf, Number, Problems, Section, Text, entry, extras, from_json, join, to_json
from ..train import finetune, total_steps
from ..protocol import Protocol, register_protocol

VISUAL_FORMAT = "forgetbench.visual/1"  # metadata of a saved fine-tuned encoder


#: The classifiers of the target whose per-image correctness a record may keep (``metrics.target.correct``): the
#: fine-tuned encoder and head, and the pre-trained model's linear probe and zero-shot head.
TARGET_CORRECT = ("acc", "lp_reference", "zs_reference")


@dataclass(frozen=True, kw_only=True)
class TargetMetrics:
    """The fine-tuned encoder and head on the target's test split, and the pre-trained model there.

    ``acc_reference`` is the better of the pre-trained model's zero-shot accuracy and its linear probe
    (``zs_reference``, ``lp_reference``), so ``gain`` is what fine-tuning adds over the best a frozen model gives,
    whatever head a method starts from. Records written before these two fields existed measured ``acc_reference``
    as zero-shot (the linear probe without a text tower); they stay readable as they are. Optional (older records
    lack them): ``acc_val``, the fine-tuned head on the target's validation split (what a selection rule may read),
    and ``correct``, which test images each classifier got right (``forgetbench.evaluate.per_image``).
    """

    dataset: str = entry(Text())
    acc: float = entry(PERCENT)
    acc_reference: float = entry(PERCENT)
    gain: float = entry(POINTS)
    zs_reference: float | None = entry(PERCENT, None, omit_if_none=True)  # absent without a text tower
    lp_reference: float | None = entry(PERCENT, None, omit_if_none=True)
    acc_val: float | None = entry(PERCENT, None, omit_if_none=True)
    correct: Mapping[str, str] | None = entry(MapOf(PerImage(), key=Choice(TARGET_CORRECT)), None, omit_if_none=True)
    extra: Mapping[str, Any] = extras()

    def check_fields(self, path: str, problems: Problems) -> None:
        difference(problems, path, self, "gain", "acc", "acc_reference")
        parts = [v for v in (self.zs_reference, self.lp_reference) if v is not None]
        if parts and abs(self.acc_reference - max(parts)) > CONSISTENCY_TOL:
            problems.add(join(path, "acc_reference"),
                         f"is {self.acc_reference!r} but max(zs_reference, lp_reference) = {max(parts)!r}")
        if self.correct is None:
            return
        at = join(path, "correct")
        block_problems(self.correct, {"acc": self.acc}, at, problems)
        for k in ("lp_reference", "zs_reference"):
            value = getattr(self, k)
            if k in self.correct and value is not None and abs(accuracy(self.correct[k]) - value) > CONSISTENCY_TOL:
                problems.add(at, f"{k} is {value!r}, but its per-image correctness gives "
                                 f"{accuracy(self.correct[k])!r}")


@dataclass(frozen=True, kw_only=True)
class FinetuneMetrics:
    target: TargetMetrics = entry(Section(TargetMetrics))
    heldout: Mapping[str, HeldoutMetrics] = entry(MapOf(Section(HeldoutMetrics)))
    summary: Mapping[str, float] = entry(MapOf(Number()))
    extra: Mapping[str, Any] = extras()

    def check_fields(self, path: str, problems: Problems) -> None:
        summary_problems(self.summary, self.heldout, f"{path}.summary", problems)


@dataclass(frozen=True, kw_only=True)
class FinetuneRecord(RunRecord):
    """A fine-tune's record: target accuracy, held-out metrics and their summary, and (optionally) the trajectory."""

    SCHEMA: ClassVar[str] = "forgetbench.result/1"

    metrics: FinetuneMetrics = entry(Section(FinetuneMetrics))
    trajectory: tuple[Checkpoint, ...] | None = entry(ListOf(Section(Checkpoint), nonempty=False, distinct=False),
                                                      None, omit_if_none=True)

    def task_problems(self, task: Any, problems: Problems) -> None:
        super().task_problems(task, problems)
        if sorted(self.metrics.heldout) != sorted(task.evaluate.datasets):
            problems.add("metrics.heldout", f"has datasets {sorted(self.metrics.heldout)} but the task evaluates "
                                            f"{sorted(task.evaluate.datasets)}")
        if self.metrics.target.dataset != task.finetune.dataset:
            problems.add("metrics.target.dataset", f"is {self.metrics.target.dataset!r} but the task fine-tunes on "
                                                   f"{task.finetune.dataset!r}")


def checkpoint_steps(n_steps: int, k: int) -> list[int]:
    """k evenly spaced steps in (0, n_steps) at which to evaluate along training (the final model comes anyway)."""
    return sorted({round(n_steps * i / (k + 1)) for i in range(1, k + 1)} - {0, n_steps}) if k and n_steps else []


def model_notes(task: Any, model: Any) -> list[str] | None:
    """What a record must say about the model: metrics it could not have (never filled with stand-in numbers)."""
    if task.evaluate.zero_shot and not model.has_text:
        return [f"zero-shot metrics skipped: {task.model} has no text tower; the head starts from a linear probe"]
    return None


def _summary(key: str):
    return lambda record: record.metrics.summary.get(key)


def _dataset_names(value: Any) -> list[str]:
    """Dataset names from a spec entry: a name, {"dataset"/"name": ...}, or a list of those."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        for key in ("dataset", "datasets", "name"):
            if key in value:
                return _dataset_names(value[key])
        return []
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _dataset_names(v)]
    return []


def _first_names(spec: Mapping, keys: tuple[str, ...]) -> list[str]:
    for key in keys:
        if key in spec:
            names = _dataset_names(spec[key])
            if names:
                return names
    return []


def task_note(records: list[FinetuneRecord]) -> str:
    """Fine-tune and held-out datasets, from the task spec when it says, else from the metrics."""
    spec = records[0].task.spec
    finetuned = _first_names(spec, ("finetune", "fine_tune", "train", "target", "sequence"))
    heldout = _first_names(spec, ("heldout", "held_out", "eval", "evaluate"))
    if not finetuned:
        finetuned = sorted({r.metrics.target.dataset for r in records})
    if not heldout:
        heldout = sorted({d for r in records for d in r.metrics.heldout})
    parts = ["Fine-tune: " + ", ".join(f"`{n}`" for n in finetuned) + "."]
    if heldout:
        parts.append("Held-out: " + ", ".join(f"`{n}`" for n in heldout) + ".")
    return " ".join(parts)


@register_protocol
class FinetuneProtocol(Protocol):
    name = "finetune"
    description = "fine-tune on one dataset; measure what the held-out datasets lost"
    record_type = FinetuneRecord
    figures = ("correlation", "trajectories", "tradeoff")
    execution_options = frozenset({"checkpoint_every", "micro_batch", "channels_last", "compile", "workers",
                                   "save_weights", "processes"})
    #: whether a task must hold out at least one dataset (the absent-class protocol measures the target itself)
    heldout_required: ClassVar[bool] = True

    # ----- tasks
    def finetune_datasets(self, task: Any) -> list[tuple[str, str]]:
        return [("finetune.dataset", task.finetune.dataset)] if task.finetune.dataset is not None else []

    def check_task(self, task: Any, problems: Problems) -> None:
        if task.sequence is not None:
            problems.add("sequence", f"a {self.name} task fine-tunes on finetune.dataset; remove the sequence section "
                                     f"(or name protocol: sequence)")
        if task.finetune.dataset is None:
            problems.add("finetune.dataset", "missing required field")
        self.check_classes(task, problems)
        if self.heldout_required and not task.evaluate.datasets:
            problems.add("evaluate.datasets", "expected a non-empty list, got []")
        super().check_task(task, problems)

    def check_classes(self, task: Any, problems: Problems) -> None:
        """Which classes of the fine-tune dataset the task trains on: all of them here."""
        if task.finetune.seen_classes is not None:
            problems.add("finetune.seen_classes", "fine-tuning on some classes only is the absent protocol's; remove "
                                                  "it (or name protocol: absent)")

    def describe(self, task: Any) -> str:
        return f"fine-tune {task.finetune.dataset}"

    def training_view(self, task: Any, dataset: Any) -> Any:
        """What the fine-tune sees of the target dataset: all of it."""
        return dataset

    # ----- a run
    def run(self, request: Any) -> FinetuneRecord | None:
        return next(iter(self.run_many(request, [(request.params, request.run_id)])), None)

    def run_many(self, request: Any, variants: list[tuple[dict, str]]) -> Iterator[FinetuneRecord]:
        """One fine-tune, then one record per variant ((params, run id) that differ in a post-hoc knob only, such
        as WiSE-FT's alpha): each is the method's ``finalize`` at its params, applied to the same fine-tuned weights
        and measured. Records come as they are made; nothing on the non-main processes."""
        task, seed, device = request.task, request.seed, request.device
        t0 = time.time()
        datasets = {n: get_dataset(n) for n in [task.finetune.dataset, *task.evaluate.datasets]}
        require_splits(datasets.values(), task.finetune.splits)  # fail before any work, not after the fine-tune
        if task.finetune.subset:  # the protocol's seeded sample of the fine-tune dataset (e.g. sized for a CPU)
            datasets[task.finetune.dataset] = sample_subset(datasets[task.finetune.dataset], dict(task.finetune.subset))
        reference = FrozenModel.load(task.model, device)
        evaluation = Evaluation(task.evaluate, task.finetune.splits, reference).prepare(datasets.values())
        target = datasets[task.finetune.dataset]
        train_view = self.training_view(task, target)
        method = request.new_method()
        head_kind = method.head_init or task.train.head_init
        head = initial_head(head_kind, evaluation, train_view, evaluation.class_embeddings(target),
                            refit_with_val=task.selection is None)  # a selection reads the val labels
        ctx = FinetuneContext.start(reference.model, method, head, task, train_view, device)
        t1 = time.time()
        split = train_view.split(task.finetune.train_split)
        trajectory: list[Checkpoint] = []
        eval_s = 0.0
        n_steps = total_steps(task.train, len(split)) if method.trains_encoder else 0
        checkpoints = set(checkpoint_steps(n_steps, task.evaluate.checkpoints))

        def on_step(step: int) -> None:  # forgetting along training: evaluate the held-out sets at a few checkpoints
            nonlocal eval_s
            if step in checkpoints and request.world.is_main:
                t = time.time()
                heldout = evaluation.heldout(ctx.student, datasets, seed)
                trajectory.append(Checkpoint(step=step, heldout=heldout, summary=summarize_heldout(heldout)))
                eval_s += time.time() - t

        checkpointer = request.checkpointer(n_steps)
        resume = checkpointer.load() if checkpointer is not None and not request.force else None
        if resume is not None:  # the trajectory so far was saved with the training state (timings: this process's)
            trajectory = [from_json(Checkpoint, c, "checkpoint trajectory") for c in resume["run"]["trajectory"]]
        elif checkpoints:
            checkpoints.add(0)
            on_step(0)  # the starting point of the trajectory, measured like every other checkpoint
        log = finetune(ctx, method, task.train, split, seed, progress=request.progress, on_step=on_step,
                       options=request.options, checkpointer=checkpointer, resume=resume,
                       run_state=lambda: {"trajectory": [to_json(c) for c in trajectory]}, finalize=False)
        finish_mode(ctx.student)  # LoRA folded into the weights: what is measured (and saved) is a plain encoder
        if not request.world.is_main:
            return
        t2 = time.time()
        training = {"steps": log.steps, "final_loss": log.final_loss, "head_init": head_kind,
                    **({"oom_halvings": log.oom_halvings, "micro_batch": log.micro_batch}
                       if log.oom_halvings else {}),  # only when out-of-memory changed how it ran
                    **({"trainable_params": log.trainable["encoder"], "trainable_params_total": log.trainable["total"]}
                       if log.trainable else {}), **(log.memory or {})}
        if len(variants) > 1:  # the fine-tune these records share, for whoever adds up the cost of a sweep
            knob = method.strength.param
            training["post_hoc"] = {"param": knob, "values": [params[knob] for params, _ in variants]}
        # a copy of the fine-tuned weights only when several values are measured from them (finalize changes them)
        trained = (copy.deepcopy(ctx.student.state_dict()), copy.deepcopy(ctx.head.state_dict())) \
            if len(variants) > 1 else None
        for params, run_id in variants:
            t3 = time.time()
            if trained is not None:
                ctx.student.load_state_dict(trained[0])
                ctx.head.load_state_dict(trained[1])
            method.params = dict(params)
            method.finalize(ctx)
            metrics = self.measure(ctx, evaluation, datasets, target, seed)
            if request.weights_path is not None:  # the encoder exactly as evaluated; metadata names the run
                save_atomic(ctx.student.state_dict(), request.weights_path, metadata={
                    "format": VISUAL_FORMAT, "run_id": run_id, "task": task.name,
                    "task_version": str(task.version), "method": method.name, "seed": str(seed), "model": task.model,
                    "reference_sha256": reference.weights_hash})
            t4 = time.time()
            path = trajectory + [Checkpoint(step=log.steps, heldout={k: replace(m, correct=None)
                                                                    for k, m in metrics.heldout.items()},
                                            summary=metrics.summary)] if trajectory else []
            timings = {"setup_s": t1 - t0, "finetune_s": t2 - t1 - eval_s, "evaluate_s": t4 - t3 + eval_s,
                       "total_s": t2 - t0 + t4 - t3}
            this = replace(request, params=dict(params), run_id=run_id)
            yield self.record_type(**this.record_fields(reference, timings, training, method_state=ctx.state,
                                                        model_notes=model_notes(task, reference.model)),
                                   metrics=metrics, trajectory=tuple(path) or None)

    def measure(self, ctx: FinetuneContext, evaluation: Evaluation, datasets: Mapping, target: Any,
                seed: int) -> FinetuneMetrics:
        """Target accuracy (test, and validation for a selection rule), and per held-out dataset the transfer gap
        and drift of the fine-tuned encoder; which test images each classifier got right, for the bootstrap."""
        reference = evaluation.reference
        _, val_split, test_split = evaluation.splits
        test, val = (extract(ctx.student, reference.model, target, split, reference.device,
                             desc=f"features {target.name}:{split} (tuned)") for split in (test_split, val_split))
        correct = head_correct(ctx.head, *test, reference.device)
        acc = percent(correct)
        on_reference = evaluation.reference_correct(target)
        reference_acc = {k: accuracy(c) for k, c in on_reference.items()}
        acc_reference = max(reference_acc.values())  # the better frozen head: zero-shot or linear probe
        heldout = evaluation.heldout(ctx.student, datasets, seed, per_image=True)
        drift = encoder_weight_drift(reference.model.visual, ctx.student)
        return self.metrics(ctx, evaluation, target, test, dict(
            target=TargetMetrics(dataset=target.name, acc=acc, acc_reference=acc_reference, gain=acc - acc_reference,
                                 zs_reference=reference_acc.get("zs"), lp_reference=reference_acc.get("lp"),
                                 acc_val=percent(head_correct(ctx.head, *val, reference.device)),
                                 correct={"acc": pack(correct),
                                          **{f"{k}_reference": c for k, c in on_reference.items()}}),
            heldout=heldout, summary=summarize_heldout(heldout, weight_drift=drift)))

    def metrics(self, ctx: FinetuneContext, evaluation: Evaluation, target: Any, test: Any,
                common: dict) -> FinetuneMetrics:
        """The record's metrics from the ones every fine-tune has (``common``); the target's test features are
        ``test``."""
        return FinetuneMetrics(**common)

    # ----- results
    def summary_line(self, record: FinetuneRecord) -> str:
        s = record.metrics.summary
        return (f"target {record.metrics.target.acc:.1f}%  "
                + (f"mean dLP {s['delta_lp_mean']:+.2f}  worst dLP {s['delta_lp_worst']:+.2f}"
                   if "delta_lp_mean" in s else "")
                + (f"  mean dZS {s['delta_zs_mean']:+.2f}" if "delta_zs_mean" in s else ""))

    def board(self, task: str, version: int, records: list, older: str | None) -> Board:
        columns = [Column("Target acc", lambda r: r.metrics.target.acc, "mean_std", key="acc"),
                   Column("ΔLP", _summary("delta_lp_mean"), "mean_std_signed", key="delta_lp_mean"),
                   Column("Worst ΔLP", _summary("delta_lp_worst"), "mean_signed", key="delta_lp_worst"),
                   Column("ΔZS", _summary("delta_zs_mean"), "mean_std_signed", key="delta_zs_mean"),
                   Column("Worst ΔZS", _summary("delta_zs_worst"), "mean_signed", key="delta_zs_worst"),
                   *(Column(m.column, _summary(m.summary_key), key=m.summary_key, optional=True)
                     for m in drift_metrics()),
                   Column("Weight drift", _summary("weight_drift"), key="weight_drift", optional=True)]
        matched = matched_or_none(task, version, records, older, task_note(records), [
            columns[0], Column("Gain", lambda r: r.metrics.target.gain, "mean_std_signed", key="gain"), *columns[1:]])
        if matched is not None:
            return matched
        return build_board(task, version, records, older, task_note(records), columns, rank_by="ΔLP")

    def plot(self, kind: str, records: Iterable[RunRecord], out: Path, per_checkpoint: bool = False,
             **options: Any) -> list[Path]:
        mine = [r for r in records if isinstance(r, FinetuneRecord)]
        if kind == "correlation":
            return plot_correlation(mine, out, per_checkpoint=per_checkpoint)
        if kind == "tradeoff":
            return plot_tradeoff(mine, out)
        return plot_trajectories(mine, out)
