"""Audit any (pre-trained, fine-tuned) pair: what did the fine-tune forget, on a suite of held-out datasets?

The tuned model may come from anywhere: a state dict of the image encoder or of a whole open_clip model (keys with a
``visual.`` or any other prefix), as safetensors or as a PyTorch file read with ``torch.load(weights_only=True)``, so
a pickle can never run code. The evaluation is ``forgetbench.run.evaluate_heldout``, the very code that scores
benchmark runs (the reference model's metrics come from the same on-disk cache), so auditing the weights a run
saved gives that run's numbers. A suite is a set of held-out datasets and the protocol to evaluate them: ``mini``
and ``standard`` ship with the package (``forgetbench/suites/``); a YAML file of the same form, or any task file
(its held-out datasets and protocol), works too.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import operator
import re
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml

from . import provenance
from .errors import SpecError, UnknownNameError, WeightsError
from .registry import Registry
from .models.weights_io import file_sha256, torch_load_tensors
from .results import summarize_heldout

AUDIT_SCHEMA = "forgetbench.audit/1"
SUITES_DIR = Path(__file__).resolve().parent / "suites"
_PLACEHOLDER = "audit/no-finetune-dataset"  # a suite fine-tunes nothing; the task form needs a name here

#: Every suite shipped in ``forgetbench/suites/``, by name; entries are paths.
SUITES = Registry("suite")
SUITES.add_loader(lambda: [SUITES.register(p.stem, p) for p in sorted(SUITES_DIR.glob("*.yaml"))])


# -------------------------------------------------------------------------------------------------------- suites

def load_suite(name_or_path: Any, exclude: tuple[str, ...] | list[str] = ()):
    """A suite as a ``TaskSpec`` whose ``evaluate`` and split roles are the suite's (its fine-tune part is unused).

    ``name_or_path``: a shipped suite's name, a suite YAML file (``name``, ``description``, ``splits``,
    ``evaluate``), a task file, or a ``TaskSpec``. ``exclude`` drops datasets (say, the one the model was tuned on).
    """
    from .tasks import TaskSpec, load_task

    if isinstance(name_or_path, TaskSpec):
        spec = name_or_path
    else:
        text = str(name_or_path)
        is_path = text.endswith((".yaml", ".yml")) or "/" in text
        try:
            path = Path(text) if is_path else Path(SUITES.get(text))
        except UnknownNameError as e:
            raise UnknownNameError(f"{e}; or give a suite or task YAML file") from None
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise SpecError(f"suite {text}: cannot read it ({e.strerror or e}); give a suite name "
                            f"({', '.join(SUITES.names())}) or a YAML file") from None
        except yaml.YAMLError as e:
            raise SpecError(f"suite {text}: invalid YAML ({' '.join(str(e).split())})") from None
        if isinstance(data, dict) and ("finetune" in data or "train" in data):
            spec = load_task(str(path))  # a task file: its held-out datasets, under its protocol
        else:
            spec = _suite_spec(data, str(path))
    unknown = [d for d in exclude if d not in spec.evaluate.datasets]
    if unknown:
        raise SpecError(f"--exclude {unknown[0]!r}: not in suite {spec.name!r} (it has: "
                        f"{', '.join(spec.evaluate.datasets)})")
    kept = tuple(d for d in spec.evaluate.datasets if d not in exclude)
    if not kept:
        raise SpecError(f"suite {spec.name!r}: --exclude left no dataset to evaluate")
    return dataclasses.replace(spec, evaluate=dataclasses.replace(spec.evaluate, datasets=kept))


def _suite_spec(data: Any, source: str):
    """Validate a suite file through the task schema, so its ``evaluate`` section means exactly what a task's does."""
    from .tasks import TaskSpec

    if not isinstance(data, dict):
        raise SpecError(f"{source}: a suite must be a mapping with keys name, description, splits, evaluate")
    extra = sorted(set(data) - {"name", "description", "splits", "evaluate"})
    if extra:
        raise SpecError(f"{source}: {extra[0]}: unknown key (accepted: description, evaluate, name, splits)")
    splits = data.get("splits", {})
    if not isinstance(splits, dict) or set(splits) - {"train_split", "val_split", "test_split"}:
        raise SpecError(f"{source}: splits: expected a mapping with train_split, val_split, test_split, got {splits!r}")
    name = data.get("name", Path(source).stem)
    task = {"name": name, "version": 1, "description": data.get("description", ""), "model": "unused",
            "finetune": {"dataset": _PLACEHOLDER, **splits}, "evaluate": data.get("evaluate"),
            "train": {"lr": 1.0, "batch_size": 1, "steps": 1}, "seeds": [0]}
    if "evaluate" not in data:
        raise SpecError(f"{source}: evaluate: missing required field (the held-out datasets and how to evaluate them)")
    return TaskSpec.from_dict(task, source=source)


def suite_description(spec) -> dict:
    ev = spec.evaluate
    return {"name": spec.name, "source": getattr(spec, "source", None), "datasets": list(ev.datasets),
            "splits": [spec.finetune.train_split, spec.finetune.val_split, spec.finetune.test_split],
            "linear_probe": {"C_grid": list(ev.linear_probe.C_grid), "max_iter": ev.linear_probe.max_iter},
            "zero_shot": ev.zero_shot, "drift": list(ev.drift)}


# ------------------------------------------------------------------------------------------------ tuned weights

def _file_kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < (100 << 20) and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    raise WeightsError(f"{path}: neither a safetensors file nor a PyTorch state dict file (it starts with "
                       f"{head[:8]!r}); save the weights with safetensors or torch.save(model.state_dict(), path)")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """(tensors, metadata, format) of a weights file, never executing anything in it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"tuned checkpoint {path} not found")
    kind = _file_kind(path)
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}), kind
        except Exception as e:  # safetensors has its own error types for damaged files
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    obj = torch_load_tensors(path)  # weights_only=True: a pickle that needs more than tensors is refused
    return _unwrap(obj, path), {}, kind


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: the object itself, or under a usual key (state_dict, model, ...)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = [k for k in ("state_dict", "model_state_dict", "model", "module", "ema") if
                     isinstance(obj.get(k), Mapping)]
            if inner:
                obj = obj[inner[0]]
                continue
        break
    raise WeightsError(f"{path}: no state dict found (a mapping of names to tensors, possibly under 'state_dict' or "
                       f"'model'); got {type(obj).__name__}")


def select_visual(state: Mapping[str, torch.Tensor], reference: torch.nn.Module, source: str
                  ) -> tuple[dict[str, torch.Tensor], str, int]:
    """The image-encoder tensors of ``state`` renamed to ``reference``'s keys: (state, prefix found, tensors ignored).

    The prefix is whatever precedes the encoder's keys (``""``, ``visual.``, ``module.visual.``, ...); every key of
    the reference must be there with its shape, and nothing else under that prefix (a LoRA or adapter checkpoint must
    be merged first).
    """
    ref_state = reference.state_dict()
    names = sorted(ref_state)
    probe = max(names, key=len)  # the longest key pins the prefix down
    prefixes = sorted({k[: -len(probe)] for k in state if k.endswith(probe)}, key=len)
    for prefix in prefixes:
        if all(prefix + n in state for n in names):
            break
    else:
        missing = [n for n in names if n not in state][:5]
        raise WeightsError(f"{source}: not a state dict of this image encoder: keys such as "
                           f"{', '.join(missing)} are missing (looked for them with and without a prefix such as "
                           f"'visual.'; the file has e.g. {', '.join(sorted(state)[:3])})")
    stray = sorted(k for k in state if k.startswith(prefix) and k[len(prefix):] not in ref_state)
    if stray and prefix:
        raise WeightsError(f"{source}: unexpected tensors under {prefix!r}: {', '.join(stray[:5])}; this is not the "
                           f"reference's architecture (merge adapters such as LoRA into the weights first)")
    out = {}
    for n in names:
        t, want = state[prefix + n], ref_state[n]
        if tuple(t.shape) != tuple(want.shape):
            raise WeightsError(f"{source}: {prefix + n} has shape {tuple(t.shape)}, the reference's "
                               f"{n} has {tuple(want.shape)}: a different architecture")
        out[n] = t.to(want.dtype) if t.is_floating_point() and want.is_floating_point() else t
    return out, prefix, len(state) - len(names)


# ----------------------------------------------------------------------------------------------------- concepts

def _per_class(pred_ok: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels, minlength=n_classes)
    hits = np.bincount(labels, weights=pred_ok.astype(np.float64), minlength=n_classes)
    return 100.0 * hits / np.maximum(counts, 1), counts


def concept_changes(dataset, f_ref: np.ndarray, f_tuned: np.ndarray, labels: np.ndarray,
                    text_weights: np.ndarray | None) -> list[dict]:
    """Per class: zero-shot accuracy before and after (with a text tower), else the class's mean L2 feature drift."""
    from .evaluate.probe import normalize

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


# -------------------------------------------------------------------------------------------------------- audit

def audit(reference: str, tuned: str | Path, suite: Any = "mini", exclude: tuple[str, ...] = (),
          device: str | None = None, seed: int | None = None) -> dict:
    """Evaluate ``tuned`` against the registered model ``reference`` on ``suite``; returns the audit (JSON-able).

    ``seed`` seeds the drift estimates exactly as a run's seed does (kernel subsample, OTDD); by default the seed
    stored in a forgetbench weights file, else 0.
    """
    from .data import DATASETS, get_dataset
    from .evaluate.drift import encoder_weight_drift
    from .evaluate.probe import zeroshot_weights
    from .models import state_dict_hash
    from .run import build_reference, default_device, evaluate_heldout, probe_splits

    spec = load_suite(suite, exclude)
    spec = dataclasses.replace(spec, model=reference)
    for name in spec.evaluate.datasets:  # every name known before any work
        try:
            DATASETS.get(name)
        except UnknownNameError as e:
            raise UnknownNameError(f"suite {spec.name!r}: {e}") from None
    state, metadata, kind = read_state_dict(tuned)
    device = device or default_device()
    ref = build_reference(spec, device)
    visual_state, prefix, ignored = select_visual(state, ref.model.visual, str(tuned))
    student = copy.deepcopy(ref.model.visual)
    student.load_state_dict(visual_state)
    student.eval()
    if seed is None:
        seed = int(metadata["seed"]) if metadata.get("seed", "").isdigit() else 0

    datasets = {n: get_dataset(n) for n in spec.evaluate.datasets}
    use_text = ref.model.has_text and spec.evaluate.zero_shot
    text_weights = {n: zeroshot_weights(ref.model, d) for n, d in datasets.items()} if use_text else {}
    tuned_test: dict = {}
    with torch.no_grad():
        heldout = evaluate_heldout(student, ref, spec, seed, datasets, text_weights, test_features=tuned_test)
        wd = encoder_weight_drift(ref.model.visual, student)
    _, _, test_split = probe_splits(spec)
    concepts = []
    for name, ds in datasets.items():
        f_ref, labels = ref.features(ds, test_split)
        concepts += concept_changes(ds, f_ref, tuned_test[name][0], labels, text_weights.get(name))
    concepts.sort(key=lambda c: (c["delta"], c["dataset"], c["concept"]))
    tuned_hash = state_dict_hash(student)
    result = {
        "schema": AUDIT_SCHEMA,
        "reference": {"model": reference, "weights_sha256": ref.weights_hash, "has_text": ref.model.has_text},
        "tuned": {"file": str(tuned), "file_sha256": file_sha256(Path(tuned)), "format": kind, "prefix": prefix,
                  "ignored_tensors": ignored, "weights_sha256": tuned_hash, "metadata": metadata,
                  "identical_to_reference": tuned_hash == ref.weights_hash},
        "suite": suite_description(spec),
        "seed": seed,
        "heldout": heldout,
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


# ---------------------------------------------------------------------------------------------------- fail-if

#: Names a --fail-if condition may use -> the summary statistic they read.
FAIL_METRICS = {"mean_delta_lp": "delta_lp_mean", "worst_delta_lp": "delta_lp_worst",
                "mean_delta_zs": "delta_zs_mean", "worst_delta_zs": "delta_zs_worst",
                "mean_drift_l2": "drift_l2_mean", "mean_drift_otdd": "drift_otdd_mean",
                "mean_drift_kernel": "drift_kernel_mean", "weight_drift": "weight_drift"}
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_CONDITION = re.compile(r"\s*([a-z_]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


@dataclasses.dataclass(frozen=True)
class FailCondition:
    """``metric op threshold``, e.g. ``mean_delta_lp<-2``: the audit fails (exit 1) when it holds."""

    text: str
    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> FailCondition:
        m = _CONDITION.fullmatch(text)
        names = ", ".join(sorted({*FAIL_METRICS, *FAIL_METRICS.values()}))
        if not m:
            raise SpecError(f"--fail-if {text!r}: expected METRIC OP NUMBER, e.g. 'mean_delta_lp<-2' (OP one of "
                            f"<, <=, >, >=; METRIC one of {names})")
        metric = FAIL_METRICS.get(m.group(1), m.group(1))
        if metric not in FAIL_METRICS.values():
            raise SpecError(f"--fail-if {text!r}: unknown metric {m.group(1)!r} (known: {names})")
        return cls(text.strip(), metric, m.group(2), float(m.group(3)))

    def value(self, result: Mapping) -> float:
        if self.metric not in result["summary"]:
            raise SpecError(f"--fail-if {self.text!r}: the audit has no {self.metric} (zero-shot needs a text tower; "
                            f"drifts need the suite to compute them)")
        return float(result["summary"][self.metric])

    def holds(self, result: Mapping) -> bool:
        return _OPS[self.op](self.value(result), self.threshold)


# ------------------------------------------------------------------------------------------------------- report

_DRIFT_TITLES = {"l2": "L2", "otdd": "OTDD", "kernel": "kernel"}
_DRIFT_COLUMNS = {"l2": "L2 drift", "otdd": "OTDD", "kernel": "Kernel drift"}  # as in the leaderboard


def _f(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = round(float(x), 2) + 0.0
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _dataset_rows(result: Mapping) -> tuple[list[str], list[dict[str, str]], list[dict[str, Any]]]:
    drifts = [d for d in ("l2", "otdd", "kernel") if any(d in m.get("drift", {}) for m in result["heldout"].values())]
    has_zs = any("zs" in m for m in result["heldout"].values())
    titles = ["Dataset", "LP reference", "LP tuned", "ΔLP"]
    titles += ["ZS reference", "ZS tuned", "ΔZS"] if has_zs else []
    titles += [_DRIFT_COLUMNS[d] for d in drifts]
    rows, keys = [], []
    for name in sorted(result["heldout"]):
        m = result["heldout"][name]
        vals = {"Dataset": name, "LP reference": m["lp_reference"], "LP tuned": m["lp"], "ΔLP": m["delta_lp"]}
        if has_zs:
            vals.update({"ZS reference": m.get("zs_reference"), "ZS tuned": m.get("zs"), "ΔZS": m.get("delta_zs")})
        vals.update({_DRIFT_COLUMNS[d]: m.get("drift", {}).get(d) for d in drifts})
        rows.append({t: (v if t == "Dataset" else _f(v, t.startswith("Δ"))) for t, v in vals.items()})
        keys.append({t: (v if v is not None else -math.inf) for t, v in vals.items()})
    s = result["summary"]
    mean = {"Dataset": "mean", "ΔLP": _f(s.get("delta_lp_mean"), True)}
    if has_zs:
        mean["ΔZS"] = _f(s.get("delta_zs_mean"), True)
    mean.update({_DRIFT_COLUMNS[d]: _f(s.get(f"drift_{d}_mean")) for d in drifts})
    rows.append({t: mean.get(t, "") for t in titles})
    keys.append({})
    return titles, rows, keys


def _concept_rows(result: Mapping, k: int = 10) -> tuple[list[str], list[dict[str, str]]]:
    """The ``k`` classes hit hardest: those whose zero-shot accuracy fell most (only those that fell), or without a
    text tower those whose features moved most."""
    concepts = [c for c in result["concepts"] if c["measure"] != "zero-shot accuracy %" or c["delta"] < 0][:k]
    if not concepts:
        return [], []
    if concepts[0]["measure"].startswith("zero-shot"):
        titles = ["Dataset", "Concept", "ZS reference %", "ZS tuned %", "Δ", "Test samples"]
        rows = [{"Dataset": c["dataset"], "Concept": c["concept"], "ZS reference %": _f(c["reference"]),
                 "ZS tuned %": _f(c["tuned"]), "Δ": _f(c["delta"], True), "Test samples": str(c["samples"])}
                for c in concepts]
    else:
        titles = ["Dataset", "Concept", "L2 drift", "Test samples"]
        rows = [{"Dataset": c["dataset"], "Concept": c["concept"], "L2 drift": f"{c['tuned']:.3f}",
                 "Test samples": str(c["samples"])} for c in concepts]
    return titles, rows


def _md_table(titles: list[str], rows: list[dict[str, str]], text_columns: int) -> str:
    from tabulate import tabulate

    return tabulate([[r.get(t, "") for t in titles] for r in rows], headers=titles, tablefmt="github",
                    disable_numparse=True,
                    colalign=["left"] * text_columns + ["right"] * (len(titles) - text_columns))


def _plots(result: Mapping, out: Path) -> list[Path]:
    """Per-dataset bars: ΔLP and ΔZS; the feature drifts. PNG and SVG each."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    from .report.plots import _RC, _save

    names = sorted(result["heldout"])
    heldout = result["heldout"]
    paths = []

    def bars(series, ylabel: str, title: str, stem: str, zero_line: bool) -> None:
        """One grouped bar chart: a bar per (dataset, series), ``series`` = [(legend label, value of a dataset)]."""
        fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.6), layout="constrained")
        ax = fig.subplots()
        x, width = np.arange(len(names)), 0.8 / len(series)
        for i, (label, value) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, [value(heldout[n]) for n in names], width, label=label)
        if zero_line:
            ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(frameon=False)
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        _save(fig, png, svg)
        paths.extend([png, svg])

    with mpl.rc_context(_RC):
        deltas = [("ΔLP", "delta_lp")] + ([("ΔZS", "delta_zs")] if any("delta_zs" in heldout[n] for n in names) else [])
        bars([(label, lambda m, k=key: m.get(k, np.nan)) for label, key in deltas], "points (tuned − reference)",
             "Accuracy change per held-out dataset (negative = forgotten)", "audit-deltas", zero_line=True)
        drifts = [d for d in ("l2", "otdd", "kernel") if any(d in heldout[n].get("drift", {}) for n in names)]
        if drifts:
            bars([(_DRIFT_TITLES[d], lambda m, d=d: m.get("drift", {}).get(d, np.nan)) for d in drifts], "distance",
                 "Feature drift per held-out dataset", "audit-drift", zero_line=False)
    return paths


def _context_lines(result: Mapping) -> list[str]:
    suite, tuned, ref = result["suite"], result["tuned"], result["reference"]
    lp = suite["linear_probe"]
    lines = [
        f"- Reference: `{ref['model']}` (weights sha256 `{ref['weights_sha256'][:16]}…`).",
        f"- Tuned: `{tuned['file']}` ({tuned['format']}, image-encoder keys under prefix "
        f"`{tuned['prefix'] or '(none)'}`, {tuned['ignored_tensors']} other tensors ignored; weights sha256 "
        f"`{tuned['weights_sha256'][:16]}…`).",
        f"- Suite `{suite['name']}`: {len(suite['datasets'])} dataset{'s' if len(suite['datasets']) != 1 else ''}; linear probe on L2-normalised features, C from "
        f"{lp['C_grid']} by validation accuracy, refit on {suite['splits'][0]} + {suite['splits'][1]}, scored on "
        f"{suite['splits'][2]}" + ("; zero-shot through the reference's frozen text tower" if ref["has_text"]
                                    and suite["zero_shot"] else "")
        + (f"; drift: {', '.join(suite['drift'])}" if suite["drift"] else "") + f"; seed {result['seed']}.",
        f"- Weight drift (relative L2 change of the encoder's weights): {result['summary']['weight_drift']:.4f}.",
    ]
    if tuned.get("metadata", {}).get("run_id"):
        md = tuned["metadata"]
        lines.append(f"- The weights file says it comes from forgetbench run `{md['run_id']}` (task `{md.get('task')}`,"
                     f" method `{md.get('method')}`, seed {md.get('seed')}).")
    return lines


_READING = ("ΔLP is the change in linear-probe accuracy (points) of the tuned encoder against the reference on each "
            "held-out dataset; ΔZS the same for zero-shot accuracy. Negative means forgotten. L2 drift is the mean "
            "squared distance between the normalised features of the same images; OTDD a distance between the "
            "labelled feature distributions; kernel drift a CKA-like distance between their similarity structures.")


def report_markdown(result: Mapping) -> str:
    titles, rows, _ = _dataset_rows(result)
    ctitles, crows = _concept_rows(result)
    parts = [f"# Forgetting audit: `{Path(result['tuned']['file']).name}` against `{result['reference']['model']}`",
             "", f"**{result['summary_line']}**", "", *_context_lines(result), "", "## Per held-out dataset", "",
             _md_table(titles, rows, 1), "", "![accuracy change per dataset](audit-deltas.png)", ""]
    if any("drift" in m for m in result["heldout"].values()):
        parts += ["![feature drift per dataset](audit-drift.png)", ""]
    parts += ["## Worst-hit concepts", ""]
    if crows:
        what = ("zero-shot accuracy per class, largest drop first" if ctitles[2].startswith("ZS") else
                "largest feature drift first (no text tower, so no per-class accuracy)")
        parts += [f"The {len(crows)} class{'es' if len(crows) > 1 else ''} hit hardest ({what}).", "",
                  _md_table(ctitles, crows, 2), ""]
    else:
        parts += ["No class lost zero-shot accuracy.", ""]
    parts += ["## How to read this", "", _READING, ""]
    return "\n".join(parts)


def report_html(result: Mapping, images: Mapping[str, bytes]) -> str:
    from .report.html import _inline_md, esc, page, png_img, table

    titles, rows, keys = _dataset_rows(result)
    ctitles, crows = _concept_rows(result)
    numeric = set(titles[1:]) | set(ctitles[2:])
    body = [f"<h1>Forgetting audit: <code>{esc(Path(result['tuned']['file']).name)}</code> against "
            f"<code>{esc(result['reference']['model'])}</code></h1>",
            f'<p class="summary">{esc(result["summary_line"])}</p>',
            "<ul>" + "".join(f"<li>{_inline_md(line[2:])}</li>" for line in _context_lines(result)) + "</ul>",
            "<h2>Per held-out dataset</h2>", table(titles, rows, keys, numeric=numeric, table_id="datasets")]
    body += [f"<figure>{png_img(data, name)}</figure>" for name, data in images.items()]
    body.append("<h2>Worst-hit concepts</h2>")
    body.append(table(ctitles, crows, numeric=numeric, table_id="concepts") if crows else
                "<p>No class lost zero-shot accuracy.</p>")
    body += ["<h2>How to read this</h2>", f"<p>{esc(_READING)}</p>"]
    return page(f"forgetbench audit: {Path(result['tuned']['file']).name}", "\n".join(body))


def write_report(result: Mapping, out_dir: str | Path) -> list[Path]:
    """``report.md``, ``report.html`` (self-contained), ``audit.json`` and the plots, in ``out_dir``.

    Everything is rendered in a temporary folder beside ``out_dir`` first and then moved in, file by file with
    ``os.replace``: an error leaves no half-written report.
    """
    import os
    import shutil
    import tempfile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".audit-", dir=out.parent))
    try:
        plots = _plots(result, tmp)
        images = {p.name: p.read_bytes() for p in plots if p.suffix == ".png"}
        (tmp / "report.md").write_text(report_markdown(result), encoding="utf-8")
        (tmp / "report.html").write_text(report_html(result, images), encoding="utf-8")
        (tmp / "audit.json").write_text(json.dumps(result, indent=1, sort_keys=True, allow_nan=False) + "\n",
                                        encoding="utf-8")
        names = ["report.md", "report.html", "audit.json", *(p.name for p in plots)]
        for name in names:
            os.chmod(tmp / name, 0o644)
            os.replace(tmp / name, out / name)
        return [out / n for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

