"""Does `forgetbench audit` of a run's saved weights give that run's own numbers? On the real mini world.

    python bench/audit_agreement.py [--task mini-shapes] [--method ft] [--seed 0] [--steps N]

Fine-tunes once with ``run_one(..., weights_dir=...)`` (nothing is stored in results/), then audits the saved encoder
twice against the task's held-out datasets: as forgetbench saved it (safetensors, image encoder only) and as plain
PyTorch code would save it (``torch.save(clip.state_dict())`` of the whole open_clip model, so keys carry a
``visual.`` prefix and the text tower comes along). Prints the largest absolute difference of every held-out number
and summary statistic against the run's record; exits 1 if one exceeds 1e-6. ``--steps`` shortens the fine-tune
(the check is about evaluation, not training). Run by hand; it is not part of the test suite.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from forgetbench.audit import audit, read_state_dict
from forgetbench.models.mini_clip import load_pretrained
from forgetbench.run import run_one, weights_path
from forgetbench.tasks import load_task

TOL = 1e-6


def differences(result: dict, record: dict) -> dict[str, float]:
    """Largest |audit - run| per kind of number."""
    out: dict[str, float] = {}
    for name, m in record["metrics"]["heldout"].items():
        got = result["heldout"][name]
        for k, v in m.items():
            if k == "drift":
                for d, x in v.items():
                    out[f"drift.{d}"] = max(out.get(f"drift.{d}", 0.0), abs(got["drift"][d] - x))
            else:
                out[k] = max(out.get(k, 0.0), abs(got[k] - v))
    for k, v in record["metrics"]["summary"].items():
        out[f"summary.{k}"] = abs(result["summary"][k] - v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mini-shapes")
    ap.add_argument("--method", default="ft")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="fine-tune steps (default: the task's own schedule)")
    args = ap.parse_args()
    task = load_task(args.task)
    if args.steps is not None:
        task = dataclasses.replace(task, train=dataclasses.replace(task.train, steps=args.steps, epochs=None))
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        record = run_one(task, args.method, args.seed, progress=False, weights_dir=tmp).to_json()
        saved = weights_path(tmp, task.name, record["method"]["name"], args.seed, record["run_id"])
        print(f"run {task.name} {args.method} seed {args.seed}: {record['training']['steps']} steps, mean dLP "
              f"{record['metrics']['summary']['delta_lp_mean']:+.4f} ({time.time() - t:.0f}s)")
        clip = load_pretrained()
        clip.visual.load_state_dict(read_state_dict(saved)[0])
        plain = Path(tmp) / "clip-state-dict.pt"
        torch.save(clip.state_dict(), plain)
        for label, path in (("forgetbench safetensors", saved), ("torch.save(clip.state_dict())", plain)):
            t = time.time()
            result = audit("mini-clip", path, task, seed=args.seed)
            diffs = differences(result, record)
            worst = max(worst, *diffs.values())
            print(f"audit of {label} ({time.time() - t:.0f}s): largest difference {max(diffs.values()):.3g} "
                  f"over {len(diffs)} kinds of number; " + ", ".join(f"{k} {v:.2g}" for k, v in sorted(diffs.items())))
    print(f"{'agree' if worst <= TOL else 'DISAGREE'}: largest difference {worst:.3g} (tolerance {TOL})")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
