"""``forgetbench run TASK --dry-run``: resolve a task, build its model, one training step per method on fake data.

It checks, on any machine and in about a minute, everything a real run needs before the first GPU hour is spent:
every name in the task (model spec, datasets, methods and their parameters), where the weights and each dataset
would be read from (reported, not required: a laptop has neither), that the model builds (with seeded random weights
of the same architecture when its own are absent), and that each method's hooks run through one optimiser step of
the real training loop on random images carrying the task's real class names. Nothing is written: no record, no
checkpoint, and features go to a temporary cache that is deleted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time

import numpy as np

from .data import DATASETS, ArraySplit, ImageDataset, get_dataset
from .data import real
from .errors import DataError, ForgetbenchError
from .evaluate.evaluation import Evaluation, FrozenModel
from .features import extract
from .heads import initial_head
from .methods import METHODS, FinetuneContext, get_method
from .models import MODELS, get_model, state_dict_hash
from .models.specs import random_variant, weights_location
from .modes import identity
from .protocol import protocol_for
from .run import check_runnable
from .tasks import check_names
from .train import finetune

FAKE_IMAGE = 32  # pixels; the model's own preprocessing resizes them, exactly as it resizes real images


@contextlib.contextmanager
def _scratch_cache():
    """Point the feature / reference-metric cache at a temporary folder for the duration (nothing is kept)."""
    old = os.environ.get("FORGETBENCH_CACHE")
    with tempfile.TemporaryDirectory(prefix="forgetbench-dry-run-") as tmp:
        os.environ["FORGETBENCH_CACHE"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("FORGETBENCH_CACHE", None)
            else:
                os.environ["FORGETBENCH_CACHE"] = old


def dataset_info(name: str) -> tuple[list[str], list[str], str]:
    """(class names, templates, where it is) without reading any image."""
    if name in real.by_name():
        classes, templates = real.class_info(name)
        return classes, templates, real.status(name)
    ds = get_dataset(name)  # registered datasets build lazily: this reads no split
    return list(ds.classnames), list(ds.templates), "built in" + (f" ({ds.description})" if ds.description else "")


def fake_dataset(name: str, classnames: list[str], templates: list[str], splits: tuple[str, ...], n: int,
                 seed: int = 0) -> ImageDataset:
    """Random images with the real class names; every class used has at least two images per split."""
    rng = np.random.default_rng(seed)
    k = max(2, min(len(classnames), n // 2))
    labels = np.arange(n) % k
    images = rng.integers(0, 256, (n, FAKE_IMAGE, FAKE_IMAGE, 3), dtype=np.uint8)
    return ImageDataset(name=f"dry-run/{name}", classnames=list(classnames), templates=list(templates[:1]),
                        split_builders={s: (lambda: ArraySplit(images, labels)) for s in splits},
                        fingerprint=f"dry-run:{name}:{n}:{seed}")


def missing_inputs(task, datasets: list[str] | None = None) -> list[str]:
    """What a run of ``task`` needs and this machine lacks: the model's weights, a real dataset's files (of
    ``datasets``; default: the fine-tune and held-out ones)."""
    missing = []
    try:
        weights_location(task.model)
    except ForgetbenchError as e:
        missing.append(f"weights of {task.model} ({e})")
    for name in _dataset_names(task) if datasets is None else datasets:
        if name in real.by_name() and not (where := real.status(name)).startswith("found"):
            missing.append(f"dataset {name} ({where})")
    return missing


def _dataset_names(task) -> list[str]:
    """The dataset fine-tuned on first, then the held-out ones."""
    target_name = protocol_for(task).finetune_datasets(task)[0][1]
    return [target_name, *[d for d in task.evaluate.datasets if d != target_name]]


def refuse_missing(task, missing: list[str], allow_missing: bool) -> None:
    """One DataError listing everything missing, unless ``allow_missing``."""
    if missing and not allow_missing:
        raise DataError(f"dry run of {task.name}: missing {'; '.join(missing)}; a run would fail (--allow-missing "
                        f"steps through with random weights instead)")


def build_model(task) -> tuple:
    """(model, where its weights are, what it was built from): the task's model, or a seeded random variant of its
    architecture when its weights are not here."""
    try:
        where, built_from = weights_location(task.model), task.model
    except ForgetbenchError as e:
        where, built_from = f"not available here: {e}", random_variant(task.model)
    return get_model(built_from), where, built_from


def dry_run(task, methods: list[str], device: str = "cpu", batch: int = 8, seed: int = 0, out=print,
            allow_missing: bool = False) -> None:
    """Print what a run of ``task`` would use and run one step per method; raise on the first real problem.

    Missing weights or dataset files fail it, all of them listed in one DataError, before anything is built;
    with ``allow_missing`` it goes on with seeded random weights and says in its last line what it did not check."""
    check_names(task, DATASETS, MODELS, METHODS)
    for m in methods:
        check_runnable(task, get_method(m))
    own = getattr(protocol_for(task), "dry_run", None)  # a protocol with its own training loop steps it itself
    if own is not None:
        return own(task, methods, device=device, batch=batch, seed=seed, out=out, allow_missing=allow_missing)
    missing = missing_inputs(task)
    refuse_missing(task, missing, allow_missing)
    out(f"dry run of {task.name} v{task.version} (nothing is written)")
    t = time.time()
    model, where, built_from = build_model(task)
    model.visual.to(device).eval()
    n_params = sum(p.numel() for p in model.visual.parameters())
    out(f"  model {task.model}: weights {where}")
    out(f"    built {built_from} in {time.time() - t:.1f}s: {n_params / 1e6:.1f}M encoder parameters, "
        f"{model.feature_dim}-d features, text tower: {'yes' if model.has_text else 'no (zero-shot metrics skipped)'}")

    names = _dataset_names(task)
    target_name = names[0]
    if any(n in real.by_name() for n in names):
        try:
            out(f"  data root: {real.data_root()}")
        except ForgetbenchError as e:
            out(f"  data root: {e}")
    infos = {}
    for name in names:
        infos[name] = dataset_info(name)
        role = "fine-tune" if name == target_name else "held out"
        subset = getattr(task.finetune, "subset", None)
        if name == target_name and subset:
            role += "; a seeded sample of " + ", ".join(f"{n} {split}" for split, n in subset.items()) + " images"
        out(f"  dataset {name} ({role}, {len(infos[name][0])} classes, {len(infos[name][1])} templates): "
            f"{infos[name][2]}")

    tr = task.train
    length = f"{tr.epochs} epochs" if tr.epochs is not None else f"{tr.steps} steps"
    mode = f"mode {tr.mode} ({identity(tr)}), " if tr.mode not in (None, "full") else ""
    out(f"  train: {mode}{tr.optimizer} lr {tr.lr:g}, weight decay {tr.weight_decay:g}, batch {tr.batch_size}, "
        f"{length}, warm-up {tr.warmup_steps}, {tr.schedule}, grad clip {tr.grad_clip}; here: one step at batch "
        f"{batch} on {FAKE_IMAGE}px random images (first template only)")
    splits = tuple(dict.fromkeys(task.finetune.splits))
    classes, templates, _ = infos[target_name]
    target = fake_dataset(target_name, classes, templates, splits, n=max(2 * batch, 8), seed=seed)
    one_step = dataclasses.replace(tr, steps=1, epochs=None, batch_size=batch, warmup_steps=0)
    with _scratch_cache():
        evaluation = Evaluation(task.evaluate, task.finetune.splits, FrozenModel(model, state_dict_hash(model.visual),
                                                                                  device))
        for name in methods:
            method = get_method(name)(**task.params_for(get_method(name).name))
            t = time.time()
            kind = method.head_init or tr.head_init
            head = initial_head(kind, evaluation, target, evaluation.class_embeddings(target),
                                features=lambda ds, split: extract(model.visual, model, ds, split, device))
            ctx = FinetuneContext.start(model, method, head, task, target, device)
            log = finetune(ctx, method, one_step, target.split(task.finetune.train_split), seed, progress=False)
            what = f"loss {log.final_loss:.4f}" if log.steps else "no training step (the encoder stays frozen)"
            out(f"  method {method.name}: {kind} head, {what} ({time.time() - t:.1f}s)")
    if missing:
        out(f"dry run INCOMPLETE: {len(methods)} method(s) stepped on random weights and images; NOT checked, "
            f"because missing here: {'; '.join(missing)}; no record written")
    else:
        out(f"dry run ok: {len(methods)} method(s) stepped; weights and the files of "
            f"{sum(n in real.by_name() for n in names)} real dataset(s) found ({len(names)} dataset(s) in all); no "
            f"record written")

