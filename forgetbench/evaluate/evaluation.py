"""The evaluation: how an encoder is scored against the frozen pre-trained model, for runs, sequences and audits.

``FrozenModel`` is the pre-trained model that forgetting is measured against (the *reference*); its features never
change, so they are extracted once and cached on disk. ``Evaluation`` holds what a task or a suite says about
measuring (``EvalSpec``: the linear probe, zero-shot, drift) and which split fits, selects and scores the probe, and
gives, for any encoder: linear-probe and zero-shot accuracy of a dataset, the reference's accuracies (cached on disk:
the same for every method and seed) and the held-out metrics with feature drift.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
from torch import nn

from ..atomic import atomic_write
from ..cache import cache_dir
from ..data.base import ImageDataset
from ..errors import DataError
from ..features import cached_extract, extract
from ..models import Model, get_model, state_dict_hash
from ..evaluate.heldout import HeldoutMetrics
from .drift_metrics import compute_drifts
from .per_image import pack, unpack
from .probe import PROBE_VERSION, linear_probe, zeroshot_correct, zeroshot_weights

Features = tuple[np.ndarray, np.ndarray]  # (features [N, D], labels [N])


def percent(correct: np.ndarray) -> float:
    """Accuracy in percent of a [N] bool vector of correct predictions."""
    return 100.0 * float(np.asarray(correct).mean())


def frozen(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module``: evaluation mode, no gradients."""
    module = copy.deepcopy(module).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@dataclass
class FrozenModel:
    """The pre-trained model, frozen: what every fine-tune starts from and forgetting is measured against."""

    model: Model
    weights_hash: str
    device: str

    @classmethod
    def load(cls, name: str, device: str) -> FrozenModel:
        """Build the registered model ``name`` on ``device``, its image encoder frozen."""
        model = get_model(name)
        model.visual.to(device).eval()
        for p in model.visual.parameters():
            p.requires_grad_(False)
        return cls(model, state_dict_hash(model.visual), device)

    def features(self, dataset: ImageDataset, split: str) -> Features:
        """The frozen encoder's features of a split, from the on-disk cache when they were extracted before."""
        return cached_extract(self.model.visual, self.model, dataset, split, self.device, self.weights_hash)

    def class_embeddings(self, dataset: ImageDataset) -> np.ndarray | None:
        """[C, D] zero-shot class embeddings of ``dataset`` through the text tower (None without one)."""
        return zeroshot_weights(self.model, dataset) if self.model.has_text else None


def require_splits(datasets: Iterable[ImageDataset], splits: Iterable[str]) -> None:
    """A DataError naming the first dataset that lacks one of ``splits``: checked before any work."""
    for ds in datasets:
        for split in splits:
            if split not in ds.split_names:
                raise DataError(f"dataset {ds.name!r} has no split {split!r} (it has: {', '.join(ds.split_names)}); "
                                f"set finetune.train_split / val_split / test_split in the task")


class Evaluation:
    """Scores encoders the way a task (or an audit suite) says, against one frozen pre-trained model.

    ``spec`` is the ``evaluate`` section (linear-probe grid, zero-shot, drift), ``splits`` the (train, val, test)
    split names: the probe fits on train, chooses C on val and is scored on test, where zero-shot and drift are
    measured too. Zero-shot accuracy is measured when the spec asks for it and the model has a text tower.
    """

    def __init__(self, spec, splits: tuple[str, str, str], reference: FrozenModel):
        self.spec, self.splits, self.reference = spec, tuple(splits), reference
        self.zero_shot = reference.model.has_text and spec.zero_shot
        self._embeddings: dict[tuple[str, str], np.ndarray | None] = {}

    @property
    def kinds(self) -> tuple[str, ...]:
        """The accuracies measured: the linear probe, and zero-shot when there is a text tower to measure it."""
        return ("lp", "zs") if self.zero_shot else ("lp",)

    def prepare(self, datasets: Iterable[ImageDataset]) -> Evaluation:
        """Compute the class embeddings of ``datasets`` now: all the text tower's work, before any training."""
        for dataset in datasets:
            self.class_embeddings(dataset)
        return self

    def class_embeddings(self, dataset: ImageDataset) -> np.ndarray | None:
        """The reference's zero-shot class embeddings of ``dataset`` (None without a text tower), computed once."""
        key = (dataset.name, dataset.fingerprint)
        if key not in self._embeddings:
            self._embeddings[key] = self.reference.class_embeddings(dataset)
        return self._embeddings[key]

    def text_weights(self, dataset: ImageDataset) -> np.ndarray | None:
        """The class embeddings zero-shot accuracy is measured with (None when it is not measured)."""
        return self.class_embeddings(dataset) if self.zero_shot else None

    def correctness(self, features_of: Callable[[str], Features], dataset: ImageDataset,
                    kinds: Iterable[str] = ("lp", "zs")) -> tuple[dict[str, np.ndarray], Features]:
        """Which test images the ``kinds`` of classifier (``lp``, ``zs``) of one encoder get right ([N] bool each),
        and its test features; ``features_of(split)`` gives the encoder's (features, labels) of a split."""
        train, val, test_split = self.splits
        test = features_of(test_split)
        out = {}
        if "lp" in kinds:
            lp = self.spec.linear_probe
            out["lp"] = linear_probe(features_of(train), features_of(val), test, lp.C_grid, lp.max_iter).correct
        if "zs" in kinds:
            out["zs"] = zeroshot_correct(test[0], test[1], self.class_embeddings(dataset))
        return out, test

    def accuracies(self, features_of: Callable[[str], Features], dataset: ImageDataset,
                   kinds: Iterable[str] = ("lp", "zs")) -> tuple[dict[str, float], Features]:
        """The ``kinds`` of accuracy (``lp``, ``zs``) of one encoder on ``dataset``, and its test features."""
        correct, test = self.correctness(features_of, dataset, kinds)
        return {kind: percent(c) for kind, c in correct.items()}, test

    def reference_accuracies(self, dataset: ImageDataset, kinds: Iterable[str] | None = None) -> dict[str, float]:
        """The pre-trained model's accuracies on ``dataset`` (default: every measured kind). With a linear probe
        they are cached on disk: they are the same for every method and seed."""
        return {kind: percent(unpack(c)) for kind, c in self.reference_correct(dataset, kinds).items()}

    def reference_correct(self, dataset: ImageDataset, kinds: Iterable[str] | None = None) -> dict[str, str]:
        """Which test images the pre-trained model's classifiers get right, packed (``per_image.pack``); cached on
        disk with a linear probe, like its accuracies."""
        kinds = tuple(kinds or self.kinds)
        features_of = lambda split: self.reference.features(dataset, split)  # noqa: E731
        if "lp" not in kinds:
            return {k: pack(c) for k, c in self.correctness(features_of, dataset, kinds)[0].items()}
        text = self.class_embeddings(dataset) if "zs" in kinds else None
        lp = self.spec.linear_probe
        key = json.dumps([self.reference.weights_hash, dataset.name, dataset.fingerprint, list(self.splits),
                          self.reference.model.preprocess_id, list(lp.C_grid), lp.max_iter, PROBE_VERSION,
                          # the text tower and prompts enter through their embeddings
                          hashlib.sha256(text.tobytes()).hexdigest() if text is not None else None,
                          "per-image"])  # the entry holds packed correctness, not accuracies
        path = cache_dir("reference-metrics") / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        if path.exists():
            return json.loads(path.read_text())
        correct = {k: pack(c) for k, c in self.correctness(features_of, dataset, kinds)[0].items()}
        atomic_write(path, json.dumps(correct), durable=False)
        return correct

    def encoder_features(self, encoder: nn.Module, dataset: ImageDataset) -> Callable[[str], Features]:
        """``features_of(split)`` of an encoder under evaluation: each split extracted once."""
        cache: dict[str, Features] = {}

        def features_of(split: str) -> Features:
            if split not in cache:
                cache[split] = extract(encoder, self.reference.model, dataset, split, self.reference.device,
                                       desc=f"features {dataset.name}:{split} (tuned)")
            return cache[split]
        return features_of

    def heldout(self, encoder: nn.Module, datasets: Mapping[str, ImageDataset], seed: int,
                test_features: dict[str, Features] | None = None,
                per_image: bool = False) -> dict[str, HeldoutMetrics]:
        """Per dataset of the spec: accuracies of ``encoder`` and of the reference, their differences, and feature
        drift (seeded by ``seed``). ``test_features``, when given, receives each dataset's test (features, labels)
        of ``encoder``. ``per_image``: also which test images each classifier got right (``correct``)."""
        heldout = {}
        for name in self.spec.datasets:
            ds = datasets[name]
            ref_correct = self.reference_correct(ds)
            ref = {kind: percent(unpack(c)) for kind, c in ref_correct.items()}
            correct, (f_test, y_test) = self.correctness(self.encoder_features(encoder, ds), ds, self.kinds)
            acc = {kind: percent(c) for kind, c in correct.items()}
            m = {"lp": acc["lp"], "lp_reference": ref["lp"], "delta_lp": acc["lp"] - ref["lp"]}
            if "zs" in acc:
                m.update(zs=acc["zs"], zs_reference=ref["zs"], delta_zs=acc["zs"] - ref["zs"])
            if self.spec.drift:
                f_ref, _ = self.reference.features(ds, self.splits[2])
                m["drift"] = compute_drifts(self.spec.drift, f_ref, f_test, y_test, seed)
            if per_image:
                m["correct"] = {**{k: pack(c) for k, c in correct.items()},
                                **{f"{k}_reference": c for k, c in ref_correct.items()}}
            heldout[name] = HeldoutMetrics(**m)
            if test_features is not None:
                test_features[name] = (f_test, y_test)
        return heldout
