"""One run, end to end: task spec -> reference and student -> fine-tune with a method -> evaluate -> one result record."""
from __future__ import annotations

import copy
import errno
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed, provenance
from .cache import cache_dir
from .checkpoint import Checkpointer
from .data import get_dataset
from .data.base import ImageDataset
from .data.subsets import sample_subset
from .errors import DataError, ForgetbenchError, ResourceError, SpecError
from .evaluate.absent import evaluate_absent, seen_view
from .evaluate.drift import encoder_weight_drift, kernel_drift, l2_drift
from .evaluate.otdd import otdd
from .evaluate.probe import PROBE_VERSION, fit_linear_probe, linear_probe, normalize, zeroshot_accuracy, zeroshot_weights
from .features import cached_extract, extract
from .methods import FinetuneContext, Method, get_method
from .models import Model, get_model, state_dict_hash
from .models.weights_io import save_atomic
from .results import ResultStore, run_id, summarize_heldout
from .train import Head, OutOfMemoryError, TrainOptions, finetune, total_steps


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Reference:
    """The frozen starting model of a run and its (cached) evaluation."""

    model: Model
    weights_hash: str
    device: str

    def features(self, dataset: ImageDataset, split: str):
        return cached_extract(self.model.visual, self.model, dataset, split, self.device, self.weights_hash)


def build_reference(task, device: str) -> Reference:
    model = get_model(task.model)
    model.visual.to(device).eval()
    for p in model.visual.parameters():
        p.requires_grad_(False)
    return Reference(model, state_dict_hash(model.visual), device)


# --------------------------------------------------------------------------------------------------- evaluation
def probe_splits(task) -> tuple[str, str, str]:
    return task.finetune.train_split, task.finetune.val_split, task.finetune.test_split


def dataset_accuracies(features_of, dataset: ImageDataset, task, text_weights) -> dict:
    """Linear-probe (and zero-shot) accuracy of one encoder on one dataset; ``features_of(split)`` gives features."""
    tr, va, te = probe_splits(task)
    lp = task.evaluate.linear_probe
    test = features_of(te)
    out = {"lp": linear_probe(features_of(tr), features_of(va), test, lp.C_grid, lp.max_iter).acc}
    if text_weights is not None:
        out["zs"] = zeroshot_accuracy(test[0], test[1], text_weights)
    return out, test


def reference_accuracies(ref: Reference, dataset: ImageDataset, task, text_weights) -> dict:
    """The reference model's accuracies, cached on disk: they are the same for every method and seed."""
    lp = task.evaluate.linear_probe
    key = json.dumps([ref.weights_hash, dataset.name, dataset.fingerprint, probe_splits(task), ref.model.preprocess_id,
                      list(lp.C_grid), lp.max_iter, PROBE_VERSION,  # the text tower and prompts enter through their embeddings
                      hashlib.sha256(text_weights.tobytes()).hexdigest() if text_weights is not None else None])
    path = cache_dir("reference-metrics") / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
    if path.exists():
        return json.loads(path.read_text())
    accs, _ = dataset_accuracies(lambda s: ref.features(dataset, s), dataset, task, text_weights)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one temporary file per writer, then an atomic rename
    tmp.write_text(json.dumps(accs))
    tmp.replace(path)
    return accs


def drift_metrics(kinds, f_ref: np.ndarray, f_ft: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    out = {}
    if "l2" in kinds:
        out["l2"] = l2_drift(f_ref, f_ft)
    if "kernel" in kinds:
        out["kernel"] = kernel_drift(f_ref, f_ft, max_samples=1000, seed=seed)
    if "otdd" in kinds:
        out["otdd"] = otdd(normalize(f_ref), labels, normalize(f_ft), labels, label_cost="gaussian", seed=seed).distance
    return out


def evaluate_heldout(student, ref: Reference, task, seed: int, datasets: dict, text_weights: dict,
                     test_features: dict | None = None) -> dict:
    """Per held-out dataset: accuracies of ``student`` and the reference, their differences, and feature drift.

    ``test_features``, when given, receives each dataset's test-split (features, labels) of ``student``.
    """
    _, _, te = probe_splits(task)
    heldout = {}
    for name in task.evaluate.datasets:
        ds = datasets[name]
        ref_acc = reference_accuracies(ref, ds, task, text_weights.get(name))
        cache = {}

        def features_of(split, ds=ds, cache=cache):
            if split not in cache:
                cache[split] = extract(student, ref.model, ds, split, ref.device, desc=f"features {ds.name}:{split} (tuned)")
            return cache[split]

        acc, (f_test, y_test) = dataset_accuracies(features_of, ds, task, text_weights.get(name))
        m = {"lp": acc["lp"], "lp_reference": ref_acc["lp"], "delta_lp": acc["lp"] - ref_acc["lp"]}
        if "zs" in acc:
            m.update(zs=acc["zs"], zs_reference=ref_acc["zs"], delta_zs=acc["zs"] - ref_acc["zs"])
        if task.evaluate.drift:
            f_ref, _ = ref.features(ds, te)
            m["drift"] = drift_metrics(task.evaluate.drift, f_ref, f_test, y_test, seed)
        heldout[name] = m
        if test_features is not None:
            test_features[name] = (f_test, y_test)
    return heldout


def evaluate_student(ctx: FinetuneContext, ref: Reference, task, seed: int, datasets: dict, text_weights: dict) -> dict:
    """Target accuracy, and per held-out dataset the transfer gap and drift of the fine-tuned encoder."""
    target = datasets[task.finetune.dataset]
    _, _, te = probe_splits(task)
    feats, labels = extract(ctx.student, ref.model, target, te, ref.device, desc=f"features {target.name}:{te} (tuned)")
    with torch.no_grad():
        pred = ctx.head(torch.from_numpy(feats).to(ref.device)).argmax(1).cpu().numpy()
    target_acc = 100.0 * float((pred == labels).mean())
    ref_target = reference_accuracies(ref, target, task, text_weights.get(target.name))
    target_ref_acc = ref_target.get("zs", ref_target["lp"])
    heldout = evaluate_heldout(ctx.student, ref, task, seed, datasets, text_weights)
    wd = encoder_weight_drift(ref.model.visual, ctx.student)
    absent = {"absent": evaluate_absent(ctx, ref, task, target, (feats, labels))} if task.finetune.seen_classes else {}
    return {
        "target": {"dataset": target.name, "acc": target_acc, "acc_reference": target_ref_acc,
                   "gain": target_acc - target_ref_acc},
        "heldout": heldout,
        "summary": summarize_heldout(heldout, weight_drift=wd),
        **absent,
    }


def checkpoint_steps(n_steps: int, k: int) -> list[int]:
    """k evenly spaced steps in (0, n_steps) at which to evaluate along training (the final model comes anyway)."""
    return sorted({round(n_steps * i / (k + 1)) for i in range(1, k + 1)} - {0, n_steps}) if k and n_steps else []


def model_notes(task, model: Model) -> dict:
    """What a record must say about the model: metrics it could not have (never filled with stand-in numbers)."""
    if task.evaluate.zero_shot and not model.has_text:
        return {"notes": [f"zero-shot metrics skipped: {task.model} has no text tower; the head starts from a "
                          f"linear probe"]}
    return {}


# --------------------------------------------------------------------------------------------------- head init
def initial_head(kind: str, ref: Reference, target: ImageDataset, task, text_weights, features=None,
                 refit_with_val: bool = True) -> Head:
    """A zero-shot head (class text embeddings x logit scale) or a linear probe on the target.

    The probe is fitted on ``features(dataset, split)`` (default: the reference's, cached). Classes without training
    samples (the absent classes of an absent-class task) keep their zero-shot rows (zero rows without a text tower).
    ``refit_with_val=False``: the probe never sees the validation labels (tuning scores the fine-tune on them).
    """
    n_classes = len(target.classnames)
    head = Head(ref.model.feature_dim, n_classes)
    zeroshot = torch.from_numpy(text_weights).float() * ref.model.logit_scale if text_weights is not None else None
    with torch.no_grad():
        head.weight.copy_(zeroshot if zeroshot is not None else torch.zeros_like(head.weight))
        head.bias.zero_()
        if kind != "zeroshot" or zeroshot is None:  # linear-probe (also the fallback without a text tower)
            tr, va, _ = probe_splits(task)
            lp = task.evaluate.linear_probe
            features = features or ref.features
            clf, _, _ = fit_linear_probe(features(target, tr), features(target, va), lp.C_grid, lp.max_iter,
                                         refit_with_val=refit_with_val)
            coef, intercept = clf.coef_, clf.intercept_
            if len(clf.classes_) == 2:  # scikit-learn keeps one row for two classes: the same softmax, split in two
                coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
            rows = torch.from_numpy(clf.classes_.astype(np.int64))
            head.weight[rows] = torch.from_numpy(coef).float()
            head.bias[rows] = torch.from_numpy(intercept).float()
    return head.to(ref.device)


# --------------------------------------------------------------------------------------------------- a run
def checkpoint_path(store: ResultStore, rid: str):
    """Where a run's resumable state lives while it trains: the results folder's own (git-ignored) scratch space."""
    return store.root / "checkpoints" / f"{rid}.pt"


def weights_path(weights_dir, task_name: str, method_name: str, seed: int, rid: str) -> Path:
    """Where ``run_one(..., weights_dir=...)`` saves a run's fine-tuned image encoder."""
    return Path(weights_dir) / task_name / f"{method_name}-seed{seed}-{rid}.safetensors"


def run_one(task, method_name: str, seed: int, store: ResultStore | None = None, params: dict | None = None,
            device: str | None = None, force: bool = False, progress: bool = True,
            options: TrainOptions | None = None, checkpoint_every: int = 0, weights_dir=None) -> dict | None:
    """Run (task, method, seed); append its record to ``store``. Returns the record, or None if it already exists.

    With ``checkpoint_every`` > 0 (and a store) the fine-tune saves its state every that many steps under
    ``<store>/checkpoints/`` and a rerun of a killed run continues from there; the file goes once the record is
    stored. A run that fails is written to the store's failures log with its reason and the error raised again;
    nothing is recorded as complete. Under torchrun every process trains and only rank 0 evaluates and writes
    (the others return None). With ``weights_dir``, the fine-tuned image encoder is saved there as safetensors
    (``weights_path``), for ``forgetbench audit`` or any other use.
    """
    if task.sequence is not None:
        raise SpecError(f"task {task.name!r} is a sequence: run it with `forgetbench run` "
                        f"(forgetbench.sequence.run_sequence), one record per method and seed")
    method_cls = get_method(method_name)
    method: Method = method_cls(**{**task.params_for(method_cls.name), **(params or {})})
    rid = run_id(task.name, task.version, method.name, method.params, seed)
    if store is not None and not force and store.has(rid, task.name):
        return None
    world, device = distributed.init(device or default_device())
    try:
        return _run(task, method, seed, rid, store, device, force, progress, options or TrainOptions(),
                    checkpoint_every, world, weights_dir)
    except Exception as e:
        error = _as_user_error(e, store)
        if store is not None and world.is_main:
            _log_failure(store, task, method, seed, error)
        if error is e:
            raise
        raise error from e


def _as_user_error(e: Exception, store: ResultStore | None) -> Exception:
    """Out of memory or of disk space become a ResourceError, a missing file a DataError; the rest stays as it is."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" under {store.root}" if store is not None else ""
        return ResourceError(f"disk full while writing{where} ({e.strerror}); free some space and rerun: finished "
                             f"runs are kept, this one was not recorded")
    if isinstance(e, FileNotFoundError):  # a dataset's or a model's files, in practice
        return DataError(f"{e.filename or 'a file'} not found ({e.strerror or e}): data or weights the run needs are "
                         f"missing; nothing was recorded")
    if isinstance(e, OutOfMemoryError):
        return ResourceError(f"out of GPU memory outside the training steps ({' '.join(str(e).split())[:200]}); "
                             f"nothing was recorded")
    return e


def _log_failure(store: ResultStore, task, method: Method, seed: int, error: Exception) -> None:
    info = {"task": task.name, "task_version": task.version, "method": method.name, "params": method.params,
            "seed": seed}
    kind = "" if isinstance(error, ForgetbenchError) else " (unexpected; please report it)"
    try:
        store.write_failure(info, f"{type(error).__name__}{kind}: {error}")
    except OSError as e:  # the failures log is on the same full disk: say so, and keep the original error
        warnings.warn(f"could not write the failure to {store.root}: {e}", stacklevel=3)


def _run(task, method: Method, seed: int, rid: str, store: ResultStore | None, device: str, force: bool,
         progress: bool, options: TrainOptions, checkpoint_every: int, world, weights_dir=None) -> dict | None:
    t0 = time.time()
    names = [task.finetune.dataset, *task.evaluate.datasets]
    datasets = {n: get_dataset(n) for n in names}
    for ds in datasets.values():  # fail before any work, not after the first fine-tune
        for split in probe_splits(task):
            if split not in ds.split_names:
                raise DataError(f"dataset {ds.name!r} has no split {split!r} (it has: {', '.join(ds.split_names)}); "
                                f"set finetune.train_split / val_split / test_split in the task")
    if task.finetune.subset:  # the protocol's seeded sample of the fine-tune dataset (e.g. sized for a CPU)
        datasets[task.finetune.dataset] = sample_subset(datasets[task.finetune.dataset], dict(task.finetune.subset))
    ref = build_reference(task, device)
    use_text = ref.model.has_text and task.evaluate.zero_shot
    text_weights = {n: zeroshot_weights(ref.model, d) for n, d in datasets.items()} if use_text else {}
    target = datasets[task.finetune.dataset]
    train_view = seen_view(task, target)  # the seen classes only, under the absent-class protocol

    student = copy.deepcopy(ref.model.visual)
    for p in student.parameters():
        p.requires_grad_(method.trains_encoder)
    head_kind = method.head_init or task.train.head_init
    text_target = text_weights.get(target.name) if use_text else (
        zeroshot_weights(ref.model, target) if ref.model.has_text else None)  # a zero-shot head even without ZS metrics
    head = initial_head(head_kind, ref, train_view, task, text_target)
    ctx = FinetuneContext(student=student, head=head, reference=ref.model.visual, model=ref.model, task=task,
                          device=device, head_initial=copy.deepcopy(head.state_dict()), train_dataset=train_view)
    t1 = time.time()
    split = train_view.split(task.finetune.train_split)
    trajectory, eval_s = [], 0.0
    n_steps = total_steps(task.train, len(split)) if method.trains_encoder else 0
    checkpoints = set(checkpoint_steps(n_steps, task.evaluate.checkpoints))

    def on_step(step):  # forgetting along training: evaluate the held-out sets at a few checkpoints
        nonlocal eval_s
        if step in checkpoints and world.is_main:
            t = time.time()
            heldout = evaluate_heldout(ctx.student, ref, task, seed, datasets, text_weights)
            trajectory.append({"step": step, "heldout": heldout, "summary": summarize_heldout(heldout)})
            eval_s += time.time() - t

    checkpointer = Checkpointer(checkpoint_path(store, rid), checkpoint_every, {"run_id": rid, "steps": n_steps}) \
        if store is not None and checkpoint_every and n_steps else None
    resume = checkpointer.load() if checkpointer is not None and not force else None
    if resume is not None:  # the trajectory so far was saved with the training state (timings: this process's)
        trajectory = resume["run"]["trajectory"]
    elif checkpoints:
        checkpoints.add(0)
        on_step(0)  # the starting point of the trajectory, measured like every other checkpoint
    log = finetune(ctx, method, task.train, split, seed, progress=progress, on_step=on_step, options=options,
                   checkpointer=checkpointer, resume=resume,
                   run_state=lambda: {"trajectory": trajectory})
    if not world.is_main:
        return None
    t2 = time.time()
    metrics = evaluate_student(ctx, ref, task, seed, datasets, text_weights)
    t3 = time.time()
    if weights_dir is not None:  # the encoder exactly as evaluated; metadata names the run it came from
        save_atomic(ctx.student.state_dict(), weights_path(weights_dir, task.name, method.name, seed, rid),
                    metadata={"format": "forgetbench.visual/1", "run_id": rid, "task": task.name,
                              "task_version": str(task.version), "method": method.name, "seed": str(seed),
                              "model": task.model, "reference_sha256": ref.weights_hash})
    if trajectory:
        trajectory.append({"step": log.steps, "heldout": metrics["heldout"], "summary": metrics["summary"]})
    record = {
        "schema": "forgetbench.result/1",
        "run_id": rid,
        "status": "complete",
        "task": {"name": task.name, "version": task.version, "spec": task.to_dict()},
        "method": {"name": method.name, "params": method.params, "reference": method.reference,
                   "state": {k: v for k, v in ctx.state.items()  # scalars a method reports, e.g. calibrate's gamma
                             if isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))}},
        "seed": seed,
        "model": {"name": task.model, "weights_sha256": ref.weights_hash, **model_notes(task, ref.model)},
        "metrics": metrics,
        "training": {"steps": log.steps, "final_loss": log.final_loss, "head_init": head_kind,
                     **({"oom_halvings": log.oom_halvings, "micro_batch": log.micro_batch}
                        if log.oom_halvings else {})},  # only when out-of-memory changed how it ran
        **({"trajectory": trajectory} if trajectory else {}),
        "timings": {"setup_s": round(t1 - t0, 2), "finetune_s": round(t2 - t1 - eval_s, 2),
                    "evaluate_s": round(t3 - t2 + eval_s, 2),
                    "total_s": round(t3 - t0, 2)},
        "provenance": {**provenance.collect(seed), "device": device, **execution(options, world)},
    }
    if store is not None:
        store.append(record, replace=force)
        if checkpointer is not None:
            checkpointer.remove()
    return record


def execution(options: TrainOptions, world) -> dict:
    """How the run was executed, when not plainly (processes, micro-batch, ...): provenance, not protocol."""
    plain = TrainOptions()
    changed = {k: getattr(options, k) for k in ("micro_batch", "channels_last", "compile", "workers")
               if getattr(options, k) != getattr(plain, k)}
    if world.parallel:
        changed["processes"] = world.size
    return {"execution": changed} if changed else {}
