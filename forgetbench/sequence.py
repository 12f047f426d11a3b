"""Continual fine-tuning: a task's sequence of fine-tunes, one record per (task, method, seed).

Each step starts from the previous step's encoder, gets a fresh head for its own classes (the task's head
initialisation, on the current encoder) and a fresh instance of the method, whose frozen reference is the original
model or the previous step's result (``sequence.reference``). After every step every dataset of the sequence and every
held-out dataset is evaluated by ``sequence.accuracy`` (zero-shot through the frozen text tower, as MTIL, and/or the
task's linear probe) -- accuracy only, so a long sequence stays cheap. The record holds the accuracy matrix R[t, j],
the held-out matrix H[t, k], the reference model's rows and the metrics of ``evaluate/sequences.py``.

A step of a class-split sequence is a view of its dataset restricted to its classes, relabelled 0..k-1, and is
evaluated among its own classes (task-incremental accuracy).
"""
from __future__ import annotations

import copy
import time

import numpy as np
from tqdm import tqdm

from . import provenance
from .data import get_dataset
from .data.base import ImageDataset
from .data.subsets import class_splits, class_subset
from .errors import DataError, SpecError
from .evaluate.probe import linear_probe, zeroshot_accuracy, zeroshot_weights
from .evaluate.sequences import heldout_metrics, sequence_metrics
from .features import extract
from .methods import FinetuneContext, get_method
from .results import SEQUENCE_SCHEMA, ResultStore, run_id
from .run import build_reference, default_device, initial_head, probe_splits, reference_accuracies
from .train import finetune


def sequence_steps(task) -> list[ImageDataset]:
    """The datasets the steps fine-tune on, in order (class-split steps are views of one dataset)."""
    seq = task.sequence
    if seq.datasets is not None:
        return [get_dataset(n) for n in seq.datasets]
    base = get_dataset(seq.split.dataset)
    groups = class_splits(base, seq.split.tasks, seq.split.class_order_seed)
    return [class_subset(base, g, relabel=True, name=f"{base.name}#{i + 1}") for i, g in enumerate(groups)]


def accuracy_kinds(task, model) -> tuple[str, ...]:
    """What fills R: the task's ``sequence.accuracy``, without zero-shot when the model has no text tower."""
    kinds = tuple(k for k in task.sequence.accuracy if k != "zs" or (model.has_text and task.evaluate.zero_shot))
    if not kinds:
        raise SpecError(f"task {task.name!r}: sequence.accuracy asks for zero-shot only, but model {model.name!r} has "
                        f"no text tower or evaluate.zero_shot is false; add lp to sequence.accuracy")
    return kinds


def _accuracies(features_of, kinds, task, text_weights) -> dict[str, float]:
    """The ``kinds`` of accuracy of one encoder on one dataset; ``features_of(split)`` gives (features, labels)."""
    tr, va, te = probe_splits(task)
    test = features_of(te)
    out = {}
    if "zs" in kinds:
        out["zs"] = zeroshot_accuracy(test[0], test[1], text_weights)
    if "lp" in kinds:
        lp = task.evaluate.linear_probe
        out["lp"] = linear_probe(features_of(tr), features_of(va), test, lp.C_grid, lp.max_iter).acc
    return out


def _reference_row(ref, columns, task, text, kinds) -> dict[str, list[float]]:
    row = {k: [] for k in kinds}
    for ds in columns:
        if "lp" in kinds:  # cached on disk, shared with single fine-tune tasks of the same protocol
            accs = reference_accuracies(ref, ds, task, text.get(ds.name) if "zs" in kinds else None)
        else:
            accs = _accuracies(lambda s, ds=ds: ref.features(ds, s), kinds, task, text.get(ds.name))
        for k in kinds:
            row[k].append(accs[k])
    return row


def _evaluate(student, ref, columns, task, text, kinds) -> tuple[dict[str, list[float]], dict]:
    """One row per kind over ``columns`` for the current encoder, and the test features it extracted."""
    row, tests = {k: [] for k in kinds}, {}
    for ds in columns:
        cache: dict = {}

        def features_of(split, ds=ds, cache=cache):
            if split not in cache:
                cache[split] = extract(student, ref.model, ds, split, ref.device, desc=f"features {ds.name}:{split}")
            return cache[split]

        accs = _accuracies(features_of, kinds, task, text.get(ds.name))
        for k in kinds:
            row[k].append(accs[k])
        tests[ds.name] = cache[probe_splits(task)[2]]
    return row, tests


def _frozen(module):
    module = copy.deepcopy(module).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _head_accuracy(head, features, labels, device) -> float:
    import torch

    with torch.no_grad():
        pred = head(torch.from_numpy(features).to(device)).argmax(1).cpu().numpy()
    return 100.0 * float((pred == labels).mean())


def run_sequence(task, method_name: str, seed: int, store: ResultStore | None = None, params: dict | None = None,
                 device: str | None = None, force: bool = False, progress: bool = True) -> dict | None:
    """Run (sequence task, method, seed); append its record to ``store``. None if it is already recorded."""
    if task.sequence is None:
        raise SpecError(f"task {task.name!r} has no sequence section; run it with forgetbench.run.run_one")
    method_cls = get_method(method_name)
    params = {**task.params_for(method_cls.name), **(params or {})}
    method = method_cls(**params)
    rid = run_id(task.name, task.version, method.name, method.params, seed)
    if store is not None and not force and store.has(rid, task.name):
        return None
    device = device or default_device()
    t0 = time.time()
    steps = sequence_steps(task)
    heldout = [get_dataset(n) for n in task.evaluate.datasets]
    columns = steps + heldout
    for ds in columns:  # fail before any work, not after the first step
        missing = [s for s in probe_splits(task) if s not in ds.split_names]
        if missing:
            raise DataError(f"dataset {ds.name!r} has no split {missing[0]!r} (it has: {', '.join(ds.split_names)}); "
                            f"set finetune.train_split / val_split / test_split in the task")
    ref = build_reference(task, device)
    kinds = accuracy_kinds(task, ref.model)
    text = {ds.name: zeroshot_weights(ref.model, ds) for ds in columns} if ref.model.has_text else {}
    reference_row = _reference_row(ref, columns, task, text, kinds)

    student = copy.deepcopy(ref.model.visual)
    for p in student.parameters():
        p.requires_grad_(method.trains_encoder)
    frozen = ref.model.visual
    rows = {k: [] for k in kinds}
    target, n_steps, losses, head_kind = [], [], [], method.head_init or task.train.head_init
    finetune_s = evaluate_s = 0.0
    t1 = time.time()
    for t, step in enumerate(tqdm(steps, desc=f"sequence ({method.name})", unit="step", leave=False,
                                  disable=None if progress else True)):
        t_step = time.time()
        method = method_cls(**params)  # hooks keep per-fine-tune state: a fresh instance per step
        # the probe head is fitted on the encoder the step starts from (the original one, cached, at step 0)
        features = None if t == 0 else (lambda ds, s: extract(student, ref.model, ds, s, device))
        head = initial_head(head_kind, ref, step, task, text.get(step.name), features)
        ctx = FinetuneContext(student=student, head=head, reference=frozen, model=ref.model, task=task,
                              device=device, head_initial=copy.deepcopy(head.state_dict()), train_dataset=step)
        log = finetune(ctx, method, task.train, step.split(task.finetune.train_split), seed, progress=progress)
        n_steps.append(log.steps)
        losses.append(log.final_loss)
        t_eval = time.time()
        finetune_s += t_eval - t_step
        row, tests = _evaluate(student, ref, columns, task, text, kinds)
        for k in kinds:
            rows[k].append(row[k])
        target.append(_head_accuracy(ctx.head, *tests[step.name], device))
        evaluate_s += time.time() - t_eval
        if task.sequence.reference == "previous":
            frozen = _frozen(student)
    t2 = time.time()

    T = len(steps)
    metrics: dict = {}
    for k in kinds:
        R, H = np.array(rows[k])[:, :T], np.array(rows[k])[:, T:]
        b, hb = reference_row[k][:T], reference_row[k][T:]
        metrics[k] = {"R": R.tolist(), "reference": b, "heldout": H.tolist(), "heldout_reference": hb,
                      "summary": {**sequence_metrics(R, b), **heldout_metrics(H, hb)}}
    metrics["target"] = target
    record = {
        "schema": SEQUENCE_SCHEMA,
        "run_id": rid,
        "status": "complete",
        "task": {"name": task.name, "version": task.version, "spec": task.to_dict()},
        "method": {"name": method.name, "params": method.params, "reference": method.reference},
        "seed": seed,
        "model": {"name": task.model, "weights_sha256": ref.weights_hash},
        "sequence": {"steps": [{"name": s.name, "classes": list(s.classnames)} for s in steps],
                     "heldout": [d.name for d in heldout], "reference": task.sequence.reference,
                     "accuracy": list(kinds)},
        "metrics": metrics,
        "training": {"steps": n_steps, "final_loss": losses, "head_init": head_kind},
        "timings": {"setup_s": round(t1 - t0, 2), "finetune_s": round(finetune_s, 2),
                    "evaluate_s": round(evaluate_s, 2), "total_s": round(t2 - t0, 2)},
        "provenance": {**provenance.collect(seed), "device": device},
    }
    if store is not None:
        store.append(record, replace=force)
    return record
