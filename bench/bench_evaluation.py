"""Time one run's evaluation (``FinetuneProtocol.measure``: the target's and every held-out dataset's features, linear
probes, zero-shot, drift) of a task, and where that time goes; optionally against another revision, paired.

    python bench/bench_evaluation.py [--task mini-noise] [--repeats 5] [--baseline main] [--profile]

Each timed call is one run's evaluation as a sweep meets it: fresh dataset objects (as every run builds them), the
reference's features and metrics already in the cache (they are the same for every run), an encoder whose weights
moved away from the reference (a seeded perturbation, so features, probes and drift are all computed for real). With
``--baseline REV`` the same measurement runs in a checkout of REV (``git archive``) and in this tree, alternately, each
in its own process and with the same cache; the table gives per-pair times, the medians and the median ratio. Wall and
CPU time are both shown, with the load average: on a busy machine read the CPU time and the paired ratios.
``--profile`` adds a cProfile breakdown of one more call in this tree. Run by hand; it is not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(task_name: str, repeats: int, profile: bool) -> None:
    """Measure in this process (whichever forgetbench is first on the path) and print one JSON line per call."""
    import torch

    from forgetbench.data import get_dataset
    from forgetbench.evaluate.evaluation import Evaluation, FrozenModel
    from forgetbench.heads import initial_head
    from forgetbench.methods import FinetuneContext
    from forgetbench.protocol import protocol_for
    from forgetbench.run import default_device
    from forgetbench.tasks import load_task

    task = load_task(task_name)
    device = default_device()
    protocol = protocol_for(task)
    reference = FrozenModel.load(task.model, device)
    names = [task.finetune.dataset, *task.evaluate.datasets]

    def context(datasets):
        evaluation = Evaluation(task.evaluate, task.finetune.splits, reference).prepare(datasets.values())
        target = datasets[task.finetune.dataset]
        from forgetbench.methods import get_method
        method = get_method("ft")(**task.params_for("ft"))
        head = initial_head(task.train.head_init, evaluation, target, evaluation.class_embeddings(target),
                            refit_with_val=task.selection is None)
        ctx = FinetuneContext.start(reference.model, method, head, task, target, device)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # a fine-tune's worth of movement, the same in every tree
            for p in ctx.student.parameters():
                p.add_(0.02 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=gen))
        return ctx, evaluation, target

    def one_call():
        datasets = {n: get_dataset(n) for n in names}  # fresh, as a run builds them
        ctx, evaluation, target = context(datasets)
        w, c = time.perf_counter(), time.process_time()
        metrics = protocol.measure(ctx, evaluation, datasets, target, 0)
        return time.perf_counter() - w, time.process_time() - c, metrics

    one_call()  # fills the caches a sweep has filled after its first run
    for _ in range(repeats):
        wall, cpu, metrics = one_call()
        print(json.dumps({"wall": wall, "cpu": cpu, "summary": metrics.summary}), flush=True)
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(one_call)
        stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(r"forgetbench|functional|transforms|sklearn.*_logistic|PIL", 30)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"


def run_child(tree: Path, args) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # each tree measures its own task file: a task written for one revision need not parse in another
    own = tree / "tasks" / f"{args.task}.yaml"
    task = str(own) if own.exists() else args.task
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--task", task, "--repeats", "1"]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the measurement in {tree} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mini-noise")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls (pairs with --baseline)")
    ap.add_argument("--baseline", metavar="REV", help="also time this git revision, paired and interleaved")
    ap.add_argument("--profile", action="store_true", help="a cProfile breakdown of one more call in this tree")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.task, args.repeats, args.profile)
    print(f"load average before: {load()}")
    if not args.baseline:
        return child(args.task, args.repeats, args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline], capture_output=True)
        if archive.returncode:
            sys.exit(f"--baseline {args.baseline}: not a revision of {REPO.name} ({archive.stderr.decode().strip()})")
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        rows = []
        for i in range(args.repeats):
            b = run_child(base, args)[0]
            n = run_child(REPO, args)[0]
            rows.append((b, n))
            print(f"pair {i}: {args.baseline} {b['wall']:.2f}s wall {b['cpu']:.2f}s cpu | this tree {n['wall']:.2f}s "
                  f"wall {n['cpu']:.2f}s cpu | ratio {b['wall'] / n['wall']:.2f}x wall {b['cpu'] / n['cpu']:.2f}x cpu",
                  flush=True)
        med = lambda xs: statistics.median(xs)  # noqa: E731
        print(f"medians: {args.baseline} {med([b['wall'] for b, _ in rows]):.2f}s wall, "
              f"{med([b['cpu'] for b, _ in rows]):.2f}s cpu; this tree {med([n['wall'] for _, n in rows]):.2f}s wall, "
              f"{med([n['cpu'] for _, n in rows]):.2f}s cpu; median paired ratio "
              f"{med([b['wall'] / n['wall'] for b, n in rows]):.2f}x wall, "
              f"{med([b['cpu'] / n['cpu'] for b, n in rows]):.2f}x cpu")
        same = all(b["summary"] == n["summary"] for b, n in rows)
        print("run summaries identical in every pair" if same else "run summaries DIFFER: " +
              json.dumps({k: (rows[0][0]["summary"][k], rows[0][1]["summary"][k]) for k in rows[0][0]["summary"]
                          if rows[0][0]["summary"][k] != rows[0][1]["summary"].get(k)}))
        if args.profile:
            child(args.task, 0, True)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
