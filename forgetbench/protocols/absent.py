"""Absent classes (after Mai et al., "Fine-Tuning is Fine, if Calibrated"): fine-tune on some classes of a dataset
(``finetune.seen_classes``; the head still spans every class), evaluate over all of them.

A plain fine-tune whose training view holds the seen classes only, and whose record (``forgetbench.result/1`` with a
``metrics.absent`` block) adds, for the fine-tuned head and for the pre-trained zero-shot head: seen/absent/all
accuracies before and after the average-logit-gap calibration, AUSUC, and nearest-class-mean accuracy of the features
(``forgetbench.evaluate.absent``). Its leaderboard ranks by AUSUC.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
import torch

from ..data.subsets import class_subset
from ..evaluate.absent import absent_report, ncm_accuracies
from ..evaluate.evaluation import Evaluation
from ..features import extract
from ..heads import zeroshot_head
from ..evaluate.heldout import PERCENT
from ..records.base import RunRecord
from ..report.absent_plots import plot_absent
from ..report.board import Board, Column, build_board, fmt
from ..schema import ListOf, MapOf, Number, Problems, Section, Text, entry, extras, hint, join
from ..protocol import register_protocol
from .finetune import FinetuneMetrics, FinetuneProtocol, FinetuneRecord


@dataclass(frozen=True, kw_only=True)
class AbsentScores:
    """One classifier over every class: accuracies by group, the calibrating gap, AUSUC, and NCM of its features.
    The pre-trained model has no classifier over every class without a text tower: then only NCM."""

    acc: Mapping[str, float] | None = entry(MapOf(PERCENT), None, omit_if_none=True)
    gamma: float | None = entry(Number(unit="logits"), None, omit_if_none=True)
    calibrated: Mapping[str, float] | None = entry(MapOf(PERCENT), None, omit_if_none=True)
    ausuc: float | None = entry(Number(ge=0, le=1, unit="a fraction of the unit square"), None, omit_if_none=True)
    ncm: Mapping[str, float] = entry(MapOf(PERCENT))
    extra: Mapping[str, Any] = extras()

    def check_fields(self, path: str, problems: Problems) -> None:
        if self.acc is not None:
            for key in ("gamma", "ausuc"):
                if getattr(self, key) is None:
                    problems.add(join(path, key), "missing required field")


@dataclass(frozen=True, kw_only=True)
class AbsentBlock(AbsentScores):
    """``metrics.absent``: the fine-tuned head's scores, the seen classes, and the pre-trained model's scores."""

    seen_classes: tuple[str, ...] = entry(ListOf(Text("a class name")))
    reference: AbsentScores = entry(Section(AbsentScores))


@dataclass(frozen=True, kw_only=True)
class AbsentMetrics(FinetuneMetrics):
    absent: AbsentBlock = entry(Section(AbsentBlock))


@dataclass(frozen=True, kw_only=True)
class AbsentRecord(FinetuneRecord):
    """A fine-tune record with the absent-class block."""

    metrics: AbsentMetrics = entry(Section(AbsentMetrics))

    @classmethod
    def accepts(cls, raw: Mapping[str, Any]) -> bool:
        return isinstance(raw.get("metrics"), dict) and "absent" in raw["metrics"]


def seen_indices(task: Any, classnames: Any) -> list[int]:
    """Indices of ``finetune.seen_classes`` in the fine-tune dataset's class names; a SpecError at the task's line if a
    name is unknown or no class would be absent."""
    path = "finetune.seen_classes"
    names = list(classnames)
    out = []
    for i, name in enumerate(task.finetune.seen_classes):
        if name not in names:
            raise task.error(f"{path}[{i}]", f"{name!r} is not a class of {task.finetune.dataset!r}"
                                             f"{hint(name, names)} (its classes: {', '.join(names)})")
        out.append(names.index(name))
    if len(out) == len(names):
        raise task.error(path, f"every class of {task.finetune.dataset!r} is listed, so none would be absent; leave "
                               f"some out")
    return out


def seen_mask(task: Any, dataset: Any) -> np.ndarray:
    """[C] bool: which classes of ``dataset`` the task fine-tunes on."""
    mask = np.zeros(len(dataset.classnames), dtype=bool)
    mask[seen_indices(task, dataset.classnames)] = True
    return mask


@register_protocol
class AbsentProtocol(FinetuneProtocol):
    name = "absent"
    description = "fine-tune on some classes of a dataset; measure the absent ones, before and after calibration"
    record_type = AbsentRecord
    figures = ("absent",)
    heldout_required: ClassVar[bool] = False

    def claims(self, task: Any) -> bool:
        return task.finetune.seen_classes is not None

    def check_classes(self, task: Any, problems: Problems) -> None:
        seen = task.finetune.seen_classes
        if seen is None:
            problems.add("finetune.seen_classes", "missing required field")
        elif len(seen) < 2:  # the average logit gap needs a non-ground-truth seen class
            problems.add("finetune.seen_classes", f"expected at least two seen classes, got {len(seen)}")

    def check_names(self, task: Any, datasets: Any) -> None:
        from ..data import real  # a real dataset's class names come from its catalog, without reading its files
        if task.finetune.dataset in real.by_name():
            classnames = real.class_info(task.finetune.dataset)[0]
        else:
            build = datasets.get(task.finetune.dataset)
            classnames = getattr(build() if callable(build) else build, "classnames", None)
        if classnames is not None:  # a registry of dataset builders (not a stand-in): check the names now
            seen_indices(task, classnames)

    def describe(self, task: Any) -> str:
        return f"{super().describe(task)} (seen classes: {', '.join(task.finetune.seen_classes)})"

    def training_view(self, task: Any, dataset: Any) -> Any:
        """The seen classes only, labels kept: the head still spans every class and methods such as ``calibrate``
        find the absent ones."""
        return class_subset(dataset, np.flatnonzero(seen_mask(task, dataset)).tolist(), relabel=False,
                            name=f"{dataset.name}[seen]")

    def metrics(self, ctx: Any, evaluation: Evaluation, target: Any, test: Any, common: dict) -> AbsentMetrics:
        return AbsentMetrics(**common, absent=absent_block(ctx, evaluation, ctx.task, target, test))

    def summary_line(self, record: AbsentRecord) -> str:
        absent = record.metrics.absent
        return (super().summary_line(record) + f"absent/all {absent.acc['absent_all']:.1f}% (calibrated "
                f"{absent.calibrated['absent_all']:.1f}%)  AUSUC {absent.ausuc:.3f}")

    def board(self, task: str, version: int, records: list, older: str | None) -> Board:
        first = records[0].metrics.absent
        ref = first.reference
        pre = (f"pre-trained zero-shot head: seen/all {fmt(ref.acc['seen_all'], digits=1)}, absent/all "
               f"{fmt(ref.acc['absent_all'], digits=1)}, AUSUC {ref.ausuc:.3f}; " if ref.acc is not None else "")
        note = (f"Fine-tune on the seen classes {', '.join(f'`{c}`' for c in first.seen_classes)} of "
                f"`{records[0].metrics.target.dataset}`, evaluate over all its classes. Seen/all, absent/all, "
                f"all/all: test samples of that group, predicted among every class; \"cal.\": after adding the "
                f"average logit gap (from training data) to the absent classes' logits. AUSUC: area under the "
                f"seen/all vs absent/all curve as that bias is swept (0..1). NCM: nearest class mean of the features, "
                f"over every class ({pre}pre-trained NCM absent/all {fmt(ref.ncm['absent_all'], digits=1)}). Rows are "
                f"ranked by AUSUC.")

        def score(section: str, key: str):
            return lambda r: (getattr(r.metrics.absent, section) or {}).get(key)

        columns = [Column("Seen/all", score("acc", "seen_all"), "mean_std"),
                   Column("Absent/all", score("acc", "absent_all"), "mean_std"),
                   Column("All/all", score("acc", "all_all"), "mean_std"),
                   Column("Absent/all cal.", score("calibrated", "absent_all"), "mean_std"),
                   Column("All/all cal.", score("calibrated", "all_all"), "mean_std"),
                   Column("AUSUC", lambda r: r.metrics.absent.ausuc, "fraction"),
                   Column("NCM absent/all", score("ncm", "absent_all"), "mean_std")]
        return build_board(task, version, records, older, note, columns, rank_by="AUSUC")

    def plot(self, kind: str, records: Iterable[RunRecord], out: Path, **options: Any) -> list[Path]:
        return plot_absent([r for r in records if isinstance(r, AbsentRecord)], out)


def absent_block(ctx: Any, evaluation: Evaluation, task: Any, dataset: Any, test: tuple[np.ndarray, np.ndarray]
                 ) -> AbsentBlock:
    """The fine-tuned head's accuracies, calibrated accuracies (ALG from the seen training samples), AUSUC and NCM,
    and the same for the pre-trained model (its zero-shot head; NCM only without a text tower). ``test`` is the
    fine-tuned encoder's (features, labels) of the full test split."""
    reference = evaluation.reference
    seen = seen_mask(task, dataset)
    train_split, _, test_split = evaluation.splits
    # every class's training images: ALG reads the seen ones; NCM's class means need all (the "oracle" data)
    train = extract(ctx.student, reference.model, dataset, train_split, reference.device,
                    desc=f"features {dataset.name}:{train_split} (tuned)")

    def scores(head: Any, train: Any, test: Any) -> dict[str, Any]:
        out = {}
        if head is not None:
            on_seen = seen[train[1]]
            out = absent_report(_logits(head, test[0]), test[1], seen, _logits(head, train[0][on_seen]),
                                train[1][on_seen])
        return {**out, "ncm": ncm_accuracies(*train, *test, seen)}

    embeddings = reference.class_embeddings(dataset)  # the pre-trained classifier over every class
    reference_head = zeroshot_head(embeddings, reference.model.logit_scale, reference.device) \
        if embeddings is not None else None
    return AbsentBlock(seen_classes=tuple(dataset.classnames[i] for i in np.flatnonzero(seen)),
                       **scores(ctx.head, train, test),
                       reference=AbsentScores(**scores(reference_head, reference.features(dataset, train_split),
                                                       reference.features(dataset, test_split))))


def _logits(head: Any, features: np.ndarray) -> np.ndarray:
    device = next(head.parameters()).device
    with torch.no_grad():
        return head(torch.from_numpy(features).to(device)).float().cpu().numpy()

