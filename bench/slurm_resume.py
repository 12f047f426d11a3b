"""Cancel a Slurm job mid-run, submit the sweep again, and compare the resumed record with an uninterrupted run.

    eval "$(.ci/slurm up)"   # or any cluster whose nodes see this folder
    python bench/slurm_resume.py [--task mini-shapes] [--method ft] [--seed 0] [--checkpoint-every 16]

Submits ``forgetbench sweep TASK --launcher slurm`` for one run into a scratch results folder in the current
directory, waits for the run's first checkpoint, ``scancel``s the job, checks that nothing was recorded, submits the
same sweep again with ``--wait`` and compares every metric of its record with an uninterrupted run of the same run
id: the committed record in results/ when there is one (made by the committed code with one torch thread, as the
jobs here), else a run made in this process. Prints the metrics side by side; exits 1 if any differs. Run by hand;
tests/test_slurm.py does the same on a tiny task in the test suite.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the committed records were made; sbatch passes it to the jobs

import torch  # noqa: E402  (after OMP_NUM_THREADS)

from forgetbench.launchers import slurm_job_state  # noqa: E402
from forgetbench.records import ResultStore  # noqa: E402
from forgetbench.run import checkpoint_path, run_one  # noqa: E402
from forgetbench.sweep import expand  # noqa: E402
from forgetbench.tasks import load_task  # noqa: E402


def sweep(argv: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "forgetbench.cli", "sweep", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"forgetbench sweep {' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def leaves(tree, path: str = ""):
    """(dotted path, value) of every number or string in a record's metrics."""
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from leaves(tree[key], f"{path}.{key}" if path else key)
    else:
        yield path, tree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mini-shapes")
    ap.add_argument("--method", default="ft")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=16)
    ap.add_argument("--gpus-per-run", default="0")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the first checkpoint")
    args = ap.parse_args()
    task = load_task(args.task)
    (planned,) = expand(task, [args.method], [args.seed])
    results = Path(tempfile.mkdtemp(prefix=".slurm-resume-", dir="."))
    argv = [args.task, "--methods", args.method, "--seeds", str(args.seed), "--results", str(results),
            "--launcher", "slurm", "--gpus-per-run", args.gpus_per_run, "--time", "60",
            "--checkpoint-every", str(args.checkpoint_every)]
    try:
        t0 = time.time()
        (job,) = re.findall(r": submitted \(job (\S+)\)", sweep(argv))
        ckpt = checkpoint_path(ResultStore(results), planned.run_id)
        while not ckpt.exists():
            if slurm_job_state(job) in ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                sys.exit(f"job {job} ended before its first checkpoint (state {slurm_job_state(job) or 'gone'})")
            if time.time() - t0 > args.timeout:
                sys.exit(f"no checkpoint from job {job} after {args.timeout:.0f} s")
            time.sleep(0.5)
        subprocess.run(["scancel", job], check=True)
        while slurm_job_state(job) not in ("", "CANCELLED"):
            time.sleep(0.5)
        step = torch.load(ckpt, weights_only=True)["step"]
        assert ResultStore(results).load() == [], "the cancelled job recorded its run"
        print(f"job {job} cancelled {time.time() - t0:.0f} s after submission; its checkpoint is at step {step}")

        out = sweep([*argv, "--wait"])
        (job2,) = re.findall(r": complete \(job (\S+)\)", out)
        (record,) = [r.to_json() for r in ResultStore(results).load()]
        log = "".join(p.read_text() for p in (results / "slurm" / job2).glob("*_log.err"))
        resumed_at = re.findall(r"resuming \S+ at step (\d+)", log)
        print(f"job {job2} resumed at step {', '.join(resumed_at) or '? (no resume line in its log)'} and "
              f"recorded the run")

        committed = {r.run_id: r.to_json() for r in ResultStore(ROOT / "results").load(task.name)}
        if planned.run_id in committed:
            reference, what = committed[planned.run_id], "committed record (results/)"
        else:
            reference, what = run_one(task, args.method, args.seed, progress=False).to_json(), "uninterrupted run here"
        got, want = dict(leaves(record["metrics"])), dict(leaves(reference["metrics"]))
        width = max(map(len, got | want))
        print(f"\n{'metric':<{width}}  {'resumed after scancel':>22}  {what:>28}")
        for key in sorted(got | want):
            mark = "" if got.get(key) == want.get(key) else "  <- differs"
            print(f"{key:<{width}}  {got.get(key)!r:>22}  {want.get(key)!r:>28}{mark}")
        same = got == want and record.get("trajectory") == reference.get("trajectory")
        print(f"\n{len(got)} metrics and a {len(record.get('trajectory') or [])}-point trajectory: "
              f"{'all equal' if same else 'DIFFERENT'}")
        return 0 if same else 1
    finally:
        shutil.rmtree(results, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
