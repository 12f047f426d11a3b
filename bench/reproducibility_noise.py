"""How far two runs of the same run id drift apart: thread count (1 against 2) and a kill-and-resume.

    python bench/reproducibility_noise.py [--task mini-noise] [--methods ft,ldifs] [--seed 0] [--checkpoint-every 50]

Runs ``forgetbench run TASK --methods M --seeds S`` three times into a scratch folder, each run in its own process
with its own empty cache (so the pre-trained model's features and probes are recomputed too, as on a verifier's
machine): with ``OMP_NUM_THREADS=1``, with ``OMP_NUM_THREADS=2``, and with one thread and checkpoints, killed
(SIGKILL) as soon as its first checkpoint is written and run again, which resumes it. Then compares every measured
number of the records (``forgetbench.records.agreement.measured``) and prints, per kind of number, the largest
absolute and relative difference, and whether the records agree within the tolerance of
``forgetbench/records/agreement.py`` (the numbers behind it come from this script). Run by hand; minutes per run.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from forgetbench.records import ResultStore
from forgetbench.records.agreement import TOLERANCE, disagreements, measured


def forgetbench(args: list[str], threads: int, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "FORGETBENCH_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "forgetbench.cli", "run", *args, "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str) -> str:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{what} failed (exit {proc.returncode}):\n{out}")
    return out


def killed_and_resumed(base: list[str], results: Path, cache: Path, every: int) -> str:
    """Run with checkpoints, SIGKILL it once its first checkpoint exists, run it again; the second run's output."""
    proc = forgetbench([*base, "--results", str(results), "--checkpoint-every", str(every)], 1, cache)
    checkpoints = results / "checkpoints"
    while not (checkpoints.is_dir() and any(checkpoints.glob("*.pt"))):
        if proc.poll() is not None:
            sys.exit(f"the run ended before its first checkpoint:\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if ResultStore(results).load():
        sys.exit("the killed run recorded something")
    return finish(forgetbench([*base, "--results", str(results), "--checkpoint-every", str(every)], 1, cache),
                  "the resumed run")


def kind(field: str) -> str:
    """The kind of a measured number, for the table: drift.otdd, delta_lp, lp, summary.weight_drift, ..."""
    leaf = re.sub(r"\[\d+\]", "", field).split(".")
    if "drift" in leaf[:-1]:
        return f"drift.{leaf[-1]}"
    return leaf[-1] if not leaf[-1].startswith("drift_") else f"summary.{leaf[-1]}"


def compare(name: str, ours: dict, theirs: dict) -> list[str]:
    worst: dict[str, tuple[float, float]] = {}
    a, b = dict(measured(ours)), dict(measured(theirs))
    for field in a.keys() & b.keys():
        x, y = a[field], b[field]
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        diff = abs(x - y)
        rel = diff / max(abs(x), abs(y)) if diff else 0.0
        k = kind(field)
        old = worst.get(k, (0.0, 0.0))
        worst[k] = (max(old[0], diff), max(old[1], rel))
    bad = disagreements(ours, theirs)
    rows = [f"| {name} | {k} | {d:.2g} | {r:.2g} |" for k, (d, r) in sorted(worst.items())]
    verdict = "agree" if not bad else f"DISAGREE on {len(bad)} field(s), first {bad[0].describe()}"
    return rows + [f"| {name} | **within {TOLERANCE}** | | {verdict} |"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mini-noise")
    ap.add_argument("--methods", default="ft,ldifs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="forgetbench-noise-"))
    base = [args.task, "--methods", args.methods, "--seeds", str(args.seed)]
    methods = args.methods.split(",")
    try:
        t0 = time.time()
        runs = {"1 thread": forgetbench([*base, "--results", str(work / "t1")], 1, work / "cache-t1")}
        finish(runs["1 thread"], "the one-thread run")
        finish(forgetbench([*base, "--results", str(work / "t2")], 2, work / "cache-t2"), "the two-thread run")
        resumed = "".join(killed_and_resumed([args.task, "--methods", m, "--seeds", str(args.seed)], work / "resumed",
                                             work / "cache-resumed", args.checkpoint_every) for m in methods)
        said = [line.strip() for line in resumed.splitlines() if "resum" in line]
        print(f"three runs of {args.task} ({args.methods}, seed {args.seed}) in {time.time() - t0:.0f}s; "
              f"{'; '.join(said) or 'no resume line'}\n")
        one = {r.run_id: r.to_json() for r in ResultStore(work / "t1").load()}
        two = {r.run_id: r.to_json() for r in ResultStore(work / "t2").load()}
        back = {r.run_id: r.to_json() for r in ResultStore(work / "resumed").load()}
        print("| runs compared | kind of number | max abs. difference | max rel. difference |")
        print("| --- | --- | --- | --- |")
        for rid, rec in sorted(one.items(), key=lambda kv: kv[1]["method"]["name"]):
            m = rec["method"]["name"]
            print("\n".join(compare(f"{m}: 1 vs 2 threads", rec, two[rid])))
            print("\n".join(compare(f"{m}: killed + resumed vs uninterrupted", back[rid], rec)))
        return 0
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
