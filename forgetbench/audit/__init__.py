"""Audit any (pre-trained, fine-tuned) pair: what did the fine-tune forget, on a suite of held-out datasets?

The tuned model may come from anywhere (``weights.read_state_dict``). The evaluation is the benchmark's own
(``forgetbench.evaluate.Evaluation``, the very code that scores runs; the pre-trained model's metrics come from the
same on-disk cache), so auditing the weights a run saved gives that run's numbers. The suite (``suites.load_suite``)
says which held-out datasets, and how to evaluate them.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .. import provenance
from ..data import DATASETS, get_dataset
from ..errors import UnknownNameError
from ..evaluate.drift import encoder_weight_drift
from ..evaluate.evaluation import Evaluation, FrozenModel
from ..evaluate.probe import normalize
from ..models import state_dict_hash
from ..models.weights_io import file_sha256
from ..evaluate.heldout import summarize_heldout
from ..run import default_device
from ..schema import to_json
from .conditions import FailCondition, fail_metrics
from .report import report_html, report_markdown, write_report
from .suites import SUITES, Suite, load_suite
from .weights import read_state_dict, select_visual

AUDIT_SCHEMA = "forgetbench.audit/1"

__all__ = ["AUDIT_SCHEMA", "FailCondition", "SUITES", "Suite", "audit", "concept_changes", "fail_metrics",
           "load_suite", "read_state_dict", "report_html", "report_markdown", "select_visual", "summary_line",
           "write_report"]


def _per_class(pred_ok: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels, minlength=n_classes)
    hits = np.bincount(labels, weights=pred_ok.astype(np.float64), minlength=n_classes)
    return 100.0 * hits / np.maximum(counts, 1), counts


def concept_changes(dataset, f_ref: np.ndarray, f_tuned: np.ndarray, labels: np.ndarray,
                    text_weights: np.ndarray | None) -> list[dict]:
    """Per class: zero-shot accuracy before and after (with a text tower), else the class's mean L2 feature drift."""
    names = list(dataset.classnames)
    if text_weights is not None:  # the prediction rule of probe.zeroshot_accuracy, kept per class
        before, counts = _per_class((normalize(f_ref) @ text_weights.T).argmax(1) == labels, labels, len(names))
        after, _ = _per_class((normalize(f_tuned) @ text_weights.T).argmax(1) == labels, labels, len(names))
        return [{"dataset": dataset.name, "concept": names[c], "measure": "zero-shot accuracy %",
                 "reference": float(before[c]), "tuned": float(after[c]), "delta": float(after[c] - before[c]),
                 "samples": int(counts[c])} for c in range(len(names)) if counts[c]]
    moved = ((normalize(f_tuned) - normalize(f_ref)) ** 2).sum(1)
    counts = np.bincount(labels, minlength=len(names))
    drift = np.bincount(labels, weights=moved, minlength=len(names)) / np.maximum(counts, 1)
    return [{"dataset": dataset.name, "concept": names[c], "measure": "L2 feature drift", "reference": 0.0,
             "tuned": float(drift[c]), "delta": -float(drift[c]), "samples": int(counts[c])}
            for c in range(len(names)) if counts[c]]


def audit(reference: str, tuned: str | Path, suite: Any = "mini", exclude: tuple[str, ...] = (),
          device: str | None = None, seed: int | None = None) -> dict:
    """Evaluate ``tuned`` against the registered model ``reference`` on ``suite``; returns the audit (JSON-able).

    ``seed`` seeds the drift estimates exactly as a run's seed does (kernel subsample, OTDD); by default the seed
    stored in a forgetbench weights file, else 0.
    """
    suite = load_suite(suite, exclude)
    for name in suite.evaluate.datasets:  # every name known before any work
        try:
            DATASETS.get(name)
        except UnknownNameError as e:
            raise UnknownNameError(f"suite {suite.name!r}: {e}") from None
    state, metadata, kind = read_state_dict(tuned)
    device = device or default_device()
    frozen = FrozenModel.load(reference, device)
    visual_state, prefix, ignored = select_visual(state, frozen.model.visual, str(tuned))
    student = copy.deepcopy(frozen.model.visual)
    student.load_state_dict(visual_state)
    student.eval()
    if seed is None:
        seed = int(metadata["seed"]) if metadata.get("seed", "").isdigit() else 0

    evaluation = Evaluation(suite.evaluate, suite.split_names, frozen)
    datasets = {n: get_dataset(n) for n in suite.evaluate.datasets}
    tuned_test: dict = {}
    with torch.no_grad():
        heldout = evaluation.heldout(student, datasets, seed, test_features=tuned_test)
        wd = encoder_weight_drift(frozen.model.visual, student)
    concepts = []
    for name, ds in datasets.items():
        f_ref, labels = frozen.features(ds, suite.split_names[2])
        concepts += concept_changes(ds, f_ref, tuned_test[name][0], labels, evaluation.text_weights(ds))
    concepts.sort(key=lambda c: (c["delta"], c["dataset"], c["concept"]))
    tuned_hash = state_dict_hash(student)
    result = {
        "schema": AUDIT_SCHEMA,
        "reference": {"model": reference, "weights_sha256": frozen.weights_hash, "has_text": frozen.model.has_text},
        "tuned": {"file": str(tuned), "file_sha256": file_sha256(Path(tuned)), "format": kind, "prefix": prefix,
                  "ignored_tensors": ignored, "weights_sha256": tuned_hash, "metadata": metadata,
                  "identical_to_reference": tuned_hash == frozen.weights_hash},
        "suite": suite.describe(),
        "seed": seed,
        "heldout": to_json(heldout),
        "summary": summarize_heldout(heldout, weight_drift=wd),
        "concepts": concepts,
        "provenance": {**provenance.collect(seed), "device": device},
    }
    result["summary_line"] = summary_line(result)
    return result


def summary_line(result: Mapping) -> str:
    """One plain sentence: how much was forgotten, where most, and what was hit hardest."""
    s, heldout = result["summary"], result["heldout"]
    n = len(heldout)
    worst = min(heldout, key=lambda d: (heldout[d]["delta_lp"], d))
    lp = s["delta_lp_mean"]
    if lp < 0:
        head = (f"The fine-tuned model lost {-lp:.2f} points of linear-probe accuracy on average over {n} held-out "
                f"dataset{'s' if n != 1 else ''} (most on {worst}: {heldout[worst]['delta_lp']:+.2f})")
    else:
        head = (f"No loss of linear-probe accuracy on average over {n} held-out dataset{'s' if n != 1 else ''} "
                f"({lp:+.2f} points; lowest: {worst}, {heldout[worst]['delta_lp']:+.2f})")
    if "delta_zs_mean" in s:
        zs = s["delta_zs_mean"]
        head += (f"; zero-shot accuracy fell by {-zs:.2f} points" if zs < 0 else
                 f"; zero-shot accuracy changed by {zs:+.2f} points")
    concepts = result.get("concepts") or []
    if concepts and concepts[0]["measure"].startswith("zero-shot") and concepts[0]["delta"] < 0:
        c = concepts[0]
        head += (f"; hardest hit: '{c['concept']}' in {c['dataset']} "
                 f"({c['reference']:.0f}% -> {c['tuned']:.0f}% zero-shot)")
    elif concepts and concepts[0]["measure"] == "L2 feature drift":
        c = concepts[0]
        head += f"; features moved most for '{c['concept']}' in {c['dataset']} (L2 drift {c['tuned']:.3f})"
    if result["tuned"].get("identical_to_reference"):
        head += "; note: the tuned weights are identical to the reference's"
    return head + "."
