"""Few-shot prompt tuning, base-to-new (CoOp; CoCoOp's base-to-new split): a protocol of its own.

Per dataset of ``prompt_tuning.datasets``: its classes cut into base (the first half by class index) and new; K
training images per base class drawn by the seed; M context vectors learned in front of the class name with the
image and text towers frozen (``forgetbench.prompt_tuning``), by the method's hooks in this module's loop; then the
test split's base-class images scored among the base classes and its new-class images among the new classes (the
learned context with the new class names, never seen in training), and their harmonic mean. Beside them, the
pre-trained model's zero-shot accuracies with the dataset's hand-crafted prompts and with the context's initial words.

The image tower is frozen, so its features of the K-shot images and of the test split are computed once (and cached);
training reads them without augmentation (CoOp trains with random crops and flips: an assumption of this protocol,
which makes a mini run take seconds). One record per (method, seed) holds every dataset and their average; its
leaderboard ranks by the harmonic mean of the averaged base and new accuracies, each with a bootstrap interval over
seeds and test images.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import ImageDataset, get_dataset
from ..data.base import split_labels
from ..errors import SpecError
from ..evaluate.evaluation import Evaluation, FrozenModel, require_splits
from ..evaluate.heldout import CONSISTENCY_TOL, PERCENT
from ..evaluate.per_image import PerImage, accuracy, pack, unpack
from ..features import cached_extract
from ..methods import learning_rate
from ..progress import bar_disable
from ..prompt_tuning import (PROTOCOL, PromptBatch, PromptContext, PromptLearner, PromptMethod, base_new_classes,
                             harmonic_mean, kshot_indices)
from ..protocol import Protocol, register_protocol
from ..records.base import RunRecord
from ..report.board import Board, Column, build_board, fmt, format_params
from ..report.bootstrap import ImageDraws, interval_of, mean_draws
from ..schema import Choice, Integer, MapOf, Problems, Section, entry, extras, join
from ..train import lr_lambda, seed_everything

#: The per-image correctness a record keeps per dataset: the learned prompt and the hand-crafted prompts, base and new.
CORRECT = ("base", "new", "zs_base", "zs_new")


@dataclass(frozen=True, kw_only=True)
class BaseNew:
    """Accuracy on the base classes (among the base classes), on the new classes (among the new), and H."""

    base: float = entry(PERCENT)
    new: float = entry(PERCENT)
    h: float = entry(PERCENT)
    extra: Mapping[str, Any] = extras()

    def check_fields(self, path: str, problems: Problems) -> None:
        if abs(self.h - harmonic_mean(self.base, self.new)) > CONSISTENCY_TOL:
            problems.add(join(path, "h"), f"is {self.h!r} but the harmonic mean of base and new is "
                                          f"{harmonic_mean(self.base, self.new)!r}")


@dataclass(frozen=True, kw_only=True)
class DatasetScores(BaseNew):
    """One dataset: the learned prompt's scores, the zero-shot scores of its hand-crafted prompts (``zero_shot``) and
    of the context's initial words ("a photo of a [class].", ``init_prompt``; absent for a random init), the class
    counts, and which test images each got right (``correct``: ``CORRECT``)."""

    zero_shot: BaseNew = entry(Section(BaseNew))
    init_prompt: BaseNew | None = entry(Section(BaseNew), None, omit_if_none=True)
    n_base: int = entry(Integer(ge=1))
    n_new: int = entry(Integer(ge=1))
    correct: Mapping[str, str] = entry(MapOf(PerImage(), key=Choice(CORRECT)))

    def check_fields(self, path: str, problems: Problems) -> None:
        super().check_fields(path, problems)
        for key, value in (("base", self.base), ("new", self.new), ("zs_base", self.zero_shot.base),
                           ("zs_new", self.zero_shot.new)):
            if key not in self.correct:
                problems.add(join(join(path, "correct"), key), "missing required field")
            elif abs(accuracy(self.correct[key]) - value) > CONSISTENCY_TOL:
                problems.add(join(join(path, "correct"), key), f"gives {accuracy(self.correct[key])!r}, but the "
                                                               f"accuracy next to it is {value!r}")


def average(scores: list[BaseNew]) -> BaseNew:
    """Mean base and mean new over datasets, and H of those means (CoCoOp's "average over datasets" row)."""
    base = float(np.mean([s.base for s in scores]))
    new = float(np.mean([s.new for s in scores]))
    return BaseNew(base=base, new=new, h=harmonic_mean(base, new))


@dataclass(frozen=True, kw_only=True)
class PromptMetrics:
    datasets: Mapping[str, DatasetScores] = entry(MapOf(Section(DatasetScores)))
    average: BaseNew = entry(Section(BaseNew))
    zero_shot: BaseNew = entry(Section(BaseNew))  # the hand-crafted prompts' average
    extra: Mapping[str, Any] = extras()

    def check_fields(self, path: str, problems: Problems) -> None:
        for key, expected in (("average", average(list(self.datasets.values()))),
                              ("zero_shot", average([d.zero_shot for d in self.datasets.values()]))):
            got = getattr(self, key)
            for part in ("base", "new"):
                if abs(getattr(got, part) - getattr(expected, part)) > CONSISTENCY_TOL:
                    problems.add(join(join(path, key), part), f"is {getattr(got, part)!r} but the datasets' mean is "
                                                              f"{getattr(expected, part)!r}")


@dataclass(frozen=True, kw_only=True)
class PromptRecord(RunRecord):
    """A prompt-tuning run: base, new and H per dataset and averaged, with the pre-trained zero-shot scores."""

    SCHEMA: ClassVar[str] = "forgetbench.prompt/1"
    metrics: PromptMetrics = entry(Section(PromptMetrics))

    def task_problems(self, task: Any, problems: Problems) -> None:
        super().task_problems(task, problems)
        expected = list(task.prompt_tuning.datasets) if task.prompt_tuning is not None else []
        if sorted(self.metrics.datasets) != sorted(expected):
            problems.add("metrics.datasets", f"has {sorted(self.metrics.datasets)} but the task tunes prompts on "
                                             f"{sorted(expected)}")


# ------------------------------------------------------------------------------------------------- one dataset

class IndexSubset(torch.utils.data.Dataset):
    """The samples ``indices`` of ``split``, in that order (the K-shot training set)."""

    def __init__(self, split: torch.utils.data.Dataset, indices: np.ndarray):
        self.split, self.indices = split, np.asarray(indices)
        self.labels = split_labels(split)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.split[int(self.indices[i])]


def shots_view(dataset: ImageDataset, split: str, indices: np.ndarray) -> ImageDataset:
    """``dataset`` whose ``split`` holds only ``indices`` (its fingerprint, hence the feature cache key, names them)."""
    return ImageDataset(name=f"{dataset.name}[shots]", classnames=list(dataset.classnames),
                        templates=dataset.templates,
                        split_builders={split: lambda: IndexSubset(dataset.split(split), indices)},
                        fingerprint=f"{dataset.fingerprint}|indices={hash_indices(indices)}")


def hash_indices(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def _correct(features: torch.Tensor, labels: np.ndarray, classes: list[int], weights: torch.Tensor) -> np.ndarray:
    """[n] bool over the test images of ``classes``: nearest of ``weights`` (one row per class of ``classes``)."""
    mask = np.isin(labels, classes)
    lookup = {c: i for i, c in enumerate(classes)}
    target = np.array([lookup[int(y)] for y in labels[mask]], dtype=np.int64)
    with torch.no_grad():
        pred = (F.normalize(features[torch.from_numpy(mask)], dim=-1) @ weights.T).argmax(1).cpu().numpy()
    return pred == target


def _scores(correct_base: np.ndarray, correct_new: np.ndarray) -> BaseNew:
    base, new = 100.0 * float(correct_base.mean()), 100.0 * float(correct_new.mean())
    return BaseNew(base=base, new=new, h=harmonic_mean(base, new))


def prompt_steps(task: Any, dataset: str, n_train: int) -> int:
    """Training steps on one dataset: ``train.steps``, else its epochs (``prompt_tuning.epochs`` or ``train.epochs``)
    of ``n_train`` images."""
    train = task.train
    if train.steps is not None:
        return train.steps
    epochs = (task.prompt_tuning.epochs or {}).get(dataset, train.epochs)
    return epochs * math.ceil(n_train / train.batch_size)


def train_prompt(method: PromptMethod, ctx: PromptContext, steps: int, seed: int, logit_scale: float,
                 progress: bool = False) -> float | None:
    """``steps`` optimiser steps of the context (and the method's own parameters) on the K-shot features; returns the
    last loss (None without a step). Cross-entropy over the base classes plus the method's ``loss``."""
    train = ctx.task.train
    groups = [{"params": [ctx.learner.ctx]}, *(method.setup(ctx) or [])]
    lr = learning_rate(method, train.lr)
    if train.optimizer == "sgd":  # CoOp's optimiser
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=train.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=train.weight_decay)
    schedule = lr_lambda(train.warmup_steps, steps) if train.schedule == "cosine" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    features = F.normalize(ctx.train_features, dim=-1)
    n = len(features)
    generator = torch.Generator().manual_seed(seed)
    order, at, loss_value = torch.randperm(n, generator=generator), 0, None
    for step in tqdm(range(steps), desc=f"prompt {ctx.dataset}", unit="step", leave=False,
                     disable=not progress or bar_disable()):
        if at >= n:  # a new epoch: a new order
            order, at = torch.randperm(n, generator=generator), 0
        idx = order[at:at + train.batch_size].to(features.device)
        at += train.batch_size
        text = F.normalize(ctx.learner(), dim=-1)
        logits = logit_scale * features[idx] @ text.T
        batch = PromptBatch(image_features=features[idx], labels=ctx.train_labels[idx], text_features=text,
                            logits=logits)
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=train.label_smoothing)
        extra = method.loss(ctx, batch)
        if extra is not None:
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], train.grad_clip)
        opt.step()
        sched.step()
        method.after_step(ctx, step)
        loss_value = float(loss.detach())
    return loss_value


def tune_dataset(task: Any, method: PromptMethod, reference: FrozenModel, evaluation: Evaluation,
                 dataset: ImageDataset, seed: int, progress: bool = False) -> tuple[DatasetScores, dict]:
    """Learn a prompt on one dataset's base classes and score it on base and new; (scores, training facts)."""
    spec, model, device = task.prompt_tuning, reference.model, reference.device
    train_split, _, test_split = task.finetune.splits
    base, new = base_new_classes(len(dataset.classnames), spec.split)
    indices = kshot_indices(dataset.labels(train_split), base, spec.shots, seed)
    view = shots_view(dataset, train_split, indices)
    train_f, train_y = cached_extract(model.visual, model, view, train_split, device, reference.weights_hash)
    test_f, test_y = reference.features(dataset, test_split)
    names = list(dataset.classnames)
    learner = PromptLearner(model, [names[c] for c in base], spec.context_tokens, spec.context_init, seed, device)
    handcrafted = torch.from_numpy(evaluation.class_embeddings(dataset)).float().to(device)
    ctx = PromptContext(learner=learner, handcrafted=handcrafted[base], dataset=dataset.name,
                        classnames=[names[c] for c in base], task=task, device=device,
                        train_features=torch.from_numpy(train_f).to(device),
                        train_labels=torch.from_numpy(train_y).to(device))
    steps = prompt_steps(task, dataset.name, len(indices))
    seed_everything(seed)
    final_loss = train_prompt(method, ctx, steps, seed, model.logit_scale, progress)
    method.finalize(ctx)
    with torch.no_grad():  # the learned context, with the base and with the new class names
        new_learner = PromptLearner(model, [names[c] for c in new], spec.context_tokens, spec.context_init, seed,
                                    device)
        new_learner.ctx.copy_(learner.ctx)
        learned = {"base": F.normalize(learner(), dim=-1), "new": F.normalize(new_learner(), dim=-1)}
    test = torch.from_numpy(test_f).to(device)
    correct = {"base": _correct(test, test_y, base, learned["base"]),
               "new": _correct(test, test_y, new, learned["new"]),
               "zs_base": _correct(test, test_y, base, handcrafted[base]),
               "zs_new": _correct(test, test_y, new, handcrafted[new])}
    init = None
    if spec.context_init is not None:  # the hand-crafted prompt the context starts from, through the plain text path
        words = F.normalize(model.encode_text(
            [f"{spec.context_init} {n.replace('_', ' ')}." for n in names]).to(device), dim=-1)
        init = _scores(_correct(test, test_y, base, words[base]), _correct(test, test_y, new, words[new]))
    learned_scores = _scores(correct["base"], correct["new"])
    scores = DatasetScores(base=learned_scores.base, new=learned_scores.new, h=learned_scores.h,
                           zero_shot=_scores(correct["zs_base"], correct["zs_new"]), init_prompt=init,
                           n_base=len(base), n_new=len(new), correct={k: pack(v) for k, v in correct.items()})
    return scores, {"steps": steps, "final_loss": final_loss, "shots": len(indices)}


# ------------------------------------------------------------------------------------------------- the protocol

@register_protocol
class PromptTuningProtocol(Protocol):
    name = PROTOCOL  # the name PromptMethod's hooks are written for
    description = "few-shot prompt tuning (CoOp): learn a prompt on base classes; score base and new classes"
    record_type = PromptRecord

    def claims(self, task: Any) -> bool:
        return task.prompt_tuning is not None

    def finetune_datasets(self, task: Any) -> list[tuple[str, str]]:
        datasets = task.prompt_tuning.datasets if task.prompt_tuning is not None else ()
        return [(f"prompt_tuning.datasets[{i}]", name) for i, name in enumerate(datasets)]

    def check_task(self, task: Any, problems: Problems) -> None:
        if task.prompt_tuning is None:
            problems.add("prompt_tuning", "missing required field (the datasets, shots and context of the prompt)")
        for section, what in (("sequence", task.sequence), ("finetune.dataset", task.finetune.dataset),
                              ("finetune.seen_classes", task.finetune.seen_classes)):
            if what is not None:
                problems.add(section, "a prompt-tuning task trains on prompt_tuning.datasets only; remove it")
        if task.evaluate.datasets:
            problems.add("evaluate.datasets", "prompt tuning measures the base and new classes of its own datasets; "
                                              "leave this list empty")

    def check_names(self, task: Any, datasets: Any) -> None:
        from ..dryrun import dataset_info

        for path, name in self.finetune_datasets(task):
            n = len(dataset_info(name)[0])
            if n < 4:  # base and new each need two classes to be a classification at all
                raise task.error(path, f"{name!r} has {n} classes; base-to-new needs at least 4 (two base, two new)")

    def check_method(self, method: type) -> None:
        if not issubclass(method, PromptMethod):
            raise SpecError(f"method {method.name!r} fine-tunes an image encoder; a prompt-tuning task runs prompt "
                            f"methods only (coop, kgcoop, coop-proxy-fda, or another PromptMethod)")

    def describe(self, task: Any) -> str:
        spec = task.prompt_tuning
        init = repr(spec.context_init) if spec.context_init is not None else "random"
        return (f"prompt tuning ({spec.shots}-shot base classes, {spec.context_tokens} context tokens from {init}) "
                f"on {', '.join(spec.datasets)}")

    def run(self, request: Any) -> PromptRecord:
        task, seed, device = request.task, request.seed, request.device
        t0 = time.time()
        datasets = [get_dataset(name) for name in task.prompt_tuning.datasets]
        require_splits(datasets, task.finetune.splits)  # before any work
        reference = FrozenModel.load(task.model, device)
        if reference.model.text_model is None:
            raise SpecError(f"model {task.model!r} has no open_clip text tower: prompt tuning needs one")
        reference.model.text_model.to(device)
        evaluation = Evaluation(task.evaluate, task.finetune.splits, reference).prepare(datasets)
        t1 = time.time()
        scores, training = {}, {}
        for dataset in datasets:
            scores[dataset.name], training[dataset.name] = tune_dataset(task, request.new_method(), reference,
                                                                        evaluation, dataset, seed, request.progress)
        metrics = PromptMetrics(datasets=scores, average=average(list(scores.values())),
                                zero_shot=average([s.zero_shot for s in scores.values()]))
        t2 = time.time()
        timings = {"setup_s": t1 - t0, "finetune_s": t2 - t1, "evaluate_s": 0.0, "total_s": t2 - t0}
        return PromptRecord(**request.record_fields(reference, timings, {"datasets": training}), metrics=metrics)

    def summary_line(self, record: PromptRecord) -> str:
        a, z = record.metrics.average, record.metrics.zero_shot
        return (f"base {a.base:.1f}%  new {a.new:.1f}%  H {a.h:.1f}  (zero-shot: base {z.base:.1f}%, new "
                f"{z.new:.1f}%, H {z.h:.1f})")

    # ----- results
    def board(self, task: str, version: int, records: list, older: str | None) -> Board:
        return prompt_board(task, version, records, older)

    # ----- a dry run: the task's names, class counts and context, one step per method on random images
    def dry_run(self, task: Any, methods: list[str], device: str = "cpu", batch: int = 8, seed: int = 0,
                out: Any = print, allow_missing: bool = False) -> None:
        from .prompt_dry_run import dry_run_prompt

        dry_run_prompt(self, task, methods, device, batch, seed, out, allow_missing)


# ------------------------------------------------------------------------------------------------- the board

REFERENCE = "coop"  # the row the others' new-class accuracy is compared with, paired over seeds
INTERVAL_NOTE = ("[a, b]: 95% interval, bootstrap over seeds and test images jointly (percentile, 2,000 draws; the "
                 "image draws shared by every row, so the comparison with `coop` is paired)")


def _runs(records: list, key: str) -> list[dict[str, np.ndarray]]:
    return [{name: unpack(d.correct[key]).astype(np.float64) for name, d in r.metrics.datasets.items()}
            for r in sorted(records, key=lambda r: r.seed)]


def prompt_board(task: str, version: int, records: list, older: str | None) -> Board:
    """Rows per (method, params): average base, new and H over the records' seeds with bootstrap intervals, and
    each row's new-class accuracy minus ``coop``'s, paired; ranked by H."""
    columns = [Column("Base", lambda r: r.metrics.average.base, "mean_std"),
               Column("New", lambda r: r.metrics.average.new, "mean_std"),
               Column("H", lambda r: r.metrics.average.h, "mean_std")]
    first = records[0]
    spec = first.task.spec.get("prompt_tuning", {})
    zs = average([r.metrics.zero_shot for r in records])  # the same in every record: the pre-trained model
    inits = [r.metrics.datasets[n].init_prompt for r in records for n in r.metrics.datasets]
    init_text = ""
    if all(i is not None for i in inits):
        i = average(inits)
        init_text = (f"; with the initial words alone (\"{spec.get('context_init')} [class].\"): base "
                     f"{fmt(i.base, digits=1)}, new {fmt(i.new, digits=1)}, H {fmt(i.h, digits=1)}")
    note = (f"Prompt tuning, base-to-new: {spec.get('shots')} shots per base class (first half of each dataset's "
            f"classes by index), {spec.get('context_tokens')} learned context tokens "
            f"({'from ' + repr(spec.get('context_init')) if spec.get('context_init') else 'random init'}), both towers "
            f"frozen, on {', '.join(f'`{n}`' for n in spec.get('datasets', []))}. Base: base-class test images among "
            f"the base classes; new: new-class images among the new classes; H: harmonic mean of the datasets' mean "
            f"base and mean new. Pre-trained zero-shot with the datasets' hand-crafted prompts: base "
            f"{fmt(zs.base, digits=1)}, new {fmt(zs.new, digits=1)}, H {fmt(zs.h, digits=1)}{init_text}. "
            f"{INTERVAL_NOTE}. Ranked by H.")
    board = build_board(task, version, records, older, note, columns, rank_by="H")
    groups: dict[tuple[str, str], list] = {}
    for r in records:
        groups.setdefault((r.method.name, format_params(dict(r.method.params), r.method.name)), []).append(r)
    sizes = {n: len(unpack(d.correct["base"])) for n, d in first.metrics.datasets.items()}
    images = {part: ImageDraws({n: len(unpack(first.metrics.datasets[n].correct[part])) for n in sizes}, seed=k)
              for k, part in enumerate(("base", "new"))}
    draws = {key: {part: mean_draws(_runs(recs, part), images[part]) for part in ("base", "new")}
             for key, recs in groups.items()}
    reference = [k for k in groups if k[0] == REFERENCE]
    gap = "New − coop"
    board.titles.append(gap)
    board.keys[gap] = "new_minus_coop"
    for cells, sort in zip(board.rows, board.sort_keys):
        key = (sort["Method"], sort["Params"])
        base, new = draws[key]["base"], draws[key]["new"]
        h_draws = 2 * base[1] * new[1] / np.maximum(base[1] + new[1], 1e-12)
        for title, (point, d) in (("Base", base), ("New", new),
                                  ("H", (harmonic_mean(base[0], new[0]), h_draws))):
            iv = interval_of(point, d)
            cells[title] = f"{fmt(iv.mean)} [{fmt(iv.low)}, {fmt(iv.high)}]"
        cells[gap], sort[gap] = "", -math.inf
        if len(reference) == 1 and key != reference[0]:
            diff = paired_new_difference(groups[key], groups[reference[0]], images["new"])
            if diff is not None:
                cells[gap] = f"{fmt(diff.mean, True)} [{fmt(diff.low, True)}, {fmt(diff.high, True)}]"
                sort[gap] = diff.mean
    return board


def paired_new_difference(a: list, b: list, images: ImageDraws):
    """New-class accuracy of records ``a`` minus ``b`` over the seeds both have (same seeds: the same K-shot
    samples), resampling those seeds and the test images jointly; None when they share no seed."""
    common = sorted({r.seed for r in a} & {r.seed for r in b})
    if not common:
        return None
    pick = lambda recs: [r for r in sorted(recs, key=lambda r: r.seed) if r.seed in common]  # noqa: E731
    pa, da = mean_draws(_runs(pick(a), "new"), images)
    pb, db = mean_draws(_runs(pick(b), "new"), images)
    return interval_of(pa - pb, da - db)
