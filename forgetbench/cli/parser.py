"""The command line's grammar: every subcommand, its flags and help. Reading it imports nothing heavy; the handler of
the command given (``module:function`` under ``forgetbench.cli``) is imported when it runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

from ..protocol import figure_kinds

DEFAULT_TASK = "mini-noise"  # a fine-tune target with headroom: clear gain and clear forgetting
LISTS = ("datasets", "models", "methods", "tasks", "protocols", "drift-metrics")


class _FigureKinds:
    """The figures the protocols draw, looked up only when argparse needs them (checking or printing ``--help``)."""

    def __contains__(self, kind: object) -> bool:
        return kind in figure_kinds()

    def __iter__(self) -> Iterator[str]:
        return iter(figure_kinds())


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind}")
        return [int(t) for t in items] if kind == "ints" else items
    return parse


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Where real datasets are, and whether missing data and weights may be downloaded (never by default)."""
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder of the real datasets (default: "
                   "$FORGETBENCH_DATA, else data_root in ~/.config/forgetbench/config.yaml)")
    p.add_argument("--download", action="store_true", help="let torchvision and the Hugging Face client fetch "
                   "missing datasets and weights (default: offline)")


def _add_execution_args(p: argparse.ArgumentParser, checkpoint_default: int | None = 0,
                        checkpoint_help: str = "off") -> None:
    """How runs execute (not part of the protocol): checkpoints, micro-batches, GPU speed-ups."""
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_default, metavar="N",
                   help="save a resumable checkpoint every N steps under RESULTS/checkpoints/; a killed run continues "
                        f"from it when rerun (default: {checkpoint_help})")
    p.add_argument("--micro-batch", type=int, default=None, metavar="N",
                   help="examples per forward pass; gradients accumulate up to the task's batch size (default: all)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster convs on GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder for training")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes (default 0)")


def _add_verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", type=int, default=1, metavar="N", help="records of costly (not mini) tasks to re-run, "
                   "a seeded sample (default 1; mini tasks: all)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of that sample (default 0)")
    p.add_argument("--method-file", action="append", default=[], metavar="PY", help="load a method not in "
                   "baselines/ from this .py file to re-run its records (repeatable; it is code: only files you trust)")
    p.add_argument("--method-source", action="append", default=[], metavar="PY", help="a method's .py file carried "
                   "with the file, as data: one whose sha256 a record carries in method.source_sha256 (repeatable; "
                   "submit stores it as RESULTS/method-sources/<sha256>.py)")
    p.add_argument("--allow-code", action="store_true", help="re-run a method not registered here from its source "
                   "(--method-source or RESULTS/method-sources/) after checking its sha256 against the record; that "
                   "runs the file as code (default: such records are skipped)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_set_arg(p) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a run axis of the task: train.mode (full, bitfit, lora, vpt, adapter, vqt, linear: which "
                        "encoder parameters train) or train.peft.SETTING (e.g. lora_rank); repeatable")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forgetbench", description="Measure concept forgetting of fine-tuned vision "
                                "foundation models, and the methods that prevent it.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a task for its methods and seeds; append records; print the table")
    r.add_argument("task", nargs="?", default=DEFAULT_TASK, help=f"task name or YAML path (default {DEFAULT_TASK})")
    r.add_argument("--methods", type=_csv("names"), help="comma-separated methods or .py files (default: the task's)")
    r.add_argument("--seeds", type=_csv("ints"), help="comma-separated seeds (default: the task's)")
    r.add_argument("--results", default="runs", help="results directory (default runs/; the committed "
                   "leaderboard reads results/)")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    r.add_argument("--force", action="store_true", help="rerun and replace runs that are already recorded")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--dry-run", action="store_true", help="check the task: its names, that its weights and datasets' "
                   "files are here, build its model and take one training step per method on fake data; writes nothing")
    r.add_argument("--allow-missing", action="store_true", help="with --dry-run: go on with random weights when the "
                   "model's or a dataset's files are missing (the last line says what was not checked); default: fail "
                   "with the list of what is missing")
    r.add_argument("--dry-run-batch", type=int, default=8, metavar="N", help="batch of the dry-run step (default 8)")
    _add_set_arg(r)
    _add_data_args(r)
    r.add_argument("--save-weights", action="store_true", help="also save each fine-tuned image encoder as "
                   "safetensors under WEIGHTS_DIR/<task>/, e.g. for `forgetbench audit`")
    r.add_argument("--weights-dir", default="weights", help="where --save-weights saves (default weights/)")
    _add_execution_args(r)
    r.set_defaults(handler="running:cmd_run")

    sw = sub.add_parser("sweep", help="run a grid of methods x seeds x hyper-parameters here or on Slurm; runs "
                        "already recorded are skipped")
    sw.add_argument("task", help="task name or YAML path")
    sw.add_argument("--methods", type=_csv("names"), help="comma-separated methods or .py files (default: the task's)")
    sw.add_argument("--seeds", type=_csv("ints"), help="comma-separated seeds (default: the task's)")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="hyper-parameter values to sweep (repeatable); KEY applies to every method declaring it, "
                         "METHOD.KEY to one method; train.mode=full,lora,... sweeps the fine-tuning mode")
    _add_set_arg(sw)
    sw.add_argument("--tradeoff", action="store_true",
                    help="every method over its own strength grid (seeds: the task's first), then, for a task with "
                         "a selection section, each method's selected setting over the rule's seeds; rerun to resume. "
                         "--grid METHOD.KEY=... replaces that method's default grid")
    sw.add_argument("--results", default="runs", help="results directory (default runs/)")
    sw.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sw.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import MODULE first, here and in every job (it may register datasets, models, methods)")
    sw.add_argument("--launcher", choices=["local", "slurm"], default="local",
                    help="local: this machine; slurm: a submitit job array (default local)")
    sw.add_argument("--jobs", type=int, default=None,
                    help="local: runs at once, one process each (default: one per visible GPU, else 1)")
    sl = sw.add_argument_group("slurm launcher")
    sl.add_argument("--partition", default=None, help="Slurm partition")
    sl.add_argument("--time", type=int, default=240, metavar="MIN", help="time limit per job in minutes (default 240)")
    sl.add_argument("--gpus-per-run", type=int, default=None,
                    help="GPUs per run (default 1 on Slurm); more than 1 trains each run data-parallel")
    sl.add_argument("--cpus-per-run", type=int, default=None, help="CPU cores per run")
    sl.add_argument("--mem-gb", type=float, default=None, help="memory per run in GB")
    sl.add_argument("--parallel", type=int, default=None, help="at most this many array jobs at once")
    sl.add_argument("--max-requeues", type=int, default=3, help="requeues after preemption or time-out (default 3)")
    sl.add_argument("--account", default=None, help="Slurm account")
    sl.add_argument("--slurm-folder", default=None, help="submitit's logs and job files (default RESULTS/slurm/%%j)")
    sl.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], default=None,
                    help="force submitit's executor: local/debug run the jobs on this machine (for testing)")
    sl.add_argument("--wait", action="store_true", help="wait for the jobs and report each outcome")
    _add_execution_args(sw, None, "100 steps on Slurm, off locally")
    sw.set_defaults(handler="running:cmd_sweep")

    lb = sub.add_parser("leaderboard", help="regenerate leaderboard.md and leaderboard.html from result records")
    lb.add_argument("--results", default="results", help="results directory (default results/)")
    lb.add_argument("--out", default=None, help="output file (default: leaderboard.md for the repository's "
                    "results/, else RESULTS/leaderboard.md, so that another folder never overwrites the committed one)")
    lb.add_argument("--html", default=None, help="the same as one self-contained HTML page (default: --out with "
                    ".html, i.e. leaderboard.html)")
    lb.add_argument("--figures", default=None, help="PNG figures to embed in the page (default RESULTS/figures)")
    lb.set_defaults(handler="results:cmd_leaderboard")

    pl = sub.add_parser("plot", help="draw a figure of a protocol's records: forgetting against drift (correlation), "
                        "along training (trajectories), along a task sequence (sequence), under absent classes "
                        "(absent), ...")
    pl.add_argument("kind", choices=_FigureKinds(), metavar="KIND",
                    help="the figure, one of %(choices)s (drawn from its protocol's records)")
    pl.add_argument("--results", default="results", help="results directory (default results/)")
    pl.add_argument("--task", action="append", help="only this task (repeatable; default: all)")
    pl.add_argument("--out", type=Path, required=True, help="output prefix; .png, .svg (and .md) are written")
    pl.add_argument("--per-checkpoint", action="store_true", help="also one point per training checkpoint")
    pl.set_defaults(handler="results:cmd_plot")

    rp = sub.add_parser("reproduce", help="run a paper entry's task set (recorded runs skipped) and render its "
                        "ledger: published against measured, cell by cell")
    rp.add_argument("name", nargs="?", help="the entry, e.g. mtil-order1 or its mini analogue mini-mtil (see --list)")
    rp.add_argument("--list", action="store_true", help="list the entries with their expected GPU time")
    rp.add_argument("--dry-run", action="store_true", help="check every task's weights and data; report all that is "
                    "missing in one list; run nothing")
    rp.add_argument("--no-run", action="store_true", help="render the ledger from the records there are; run nothing")
    rp.add_argument("--results", default="runs", help="results directory (default runs/; the committed records are "
                    "in results/)")
    rp.add_argument("--out", default=None, help="ledger Markdown file (default RESULTS/ledger/NAME.md)")
    rp.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    rp.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_args(rp)
    _add_execution_args(rp)
    rp.set_defaults(handler="reproducing:cmd_reproduce")

    ls = sub.add_parser("ls", help="list what is registered: datasets, models, methods, tasks, protocols, drift metrics")
    ls.add_argument("what", nargs="?", choices=LISTS)
    ls.add_argument("--markdown", action="store_true", help="the methods as a Markdown table (for the README)")
    ls.set_defaults(handler="catalog:cmd_ls")

    v = sub.add_parser("validate", help="check task files: schema, types, and that every name exists")
    v.add_argument("tasks", nargs="+", help="task names or YAML paths")
    v.set_defaults(handler="catalog:cmd_validate")

    vr = sub.add_parser("validate-results", help="check result files (JSON lines) before submitting them")
    vr.add_argument("files", nargs="+", help="result files, one record per line")
    vr.add_argument("--results", default=None, help="also check against the records stored in this folder")
    vr.set_defaults(handler="results:cmd_validate_results")

    sm = sub.add_parser("submit", help="validate a result file and merge it into the results folder")
    sm.add_argument("file", help="result file (JSON lines, e.g. runs/<task>.jsonl)")
    sm.add_argument("--results", default="results", help="results folder to merge into (default results/)")
    sm.add_argument("--verify", action="store_true", help="first re-run the records as `forgetbench verify` does: "
                    "any disagreement refuses the file; the runs that agree are marked verified on the leaderboard")
    _add_verify_args(sm)
    sm.set_defaults(handler="results:cmd_submit")

    ve = sub.add_parser("verify", help="re-run a result file's records (all of mini tasks, a seeded sample of costly "
                        "ones) and check they agree within the reproducibility tolerance; writes nothing")
    ve.add_argument("file", help="result file (JSON lines)")
    ve.add_argument("--results", default="results", help="results folder whose stored method sources --allow-code "
                    "may run (default results/); verify writes nothing there")
    _add_verify_args(ve)
    ve.set_defaults(handler="results:cmd_verify")

    au = sub.add_parser("audit", help="forgetting report of a fine-tuned checkpoint against its pre-trained model")
    au.add_argument("--reference", required=True, metavar="MODEL", help="the pre-trained model, by registered name "
                    "(see `forgetbench ls models`)")
    au.add_argument("--tuned", required=True, metavar="CHECKPOINT", help="fine-tuned weights: safetensors or a "
                    "PyTorch state dict (read with weights_only=True), of the image encoder or the whole model")
    au.add_argument("--suite", default="mini", help="held-out datasets: mini, standard, or a suite/task YAML file "
                    "(default mini)")
    au.add_argument("--exclude", action="append", metavar="DATASET", help="leave a suite dataset out (repeatable), "
                    "e.g. the one the model was fine-tuned on")
    au.add_argument("--out", default="audit", help="report folder (default audit/)")
    au.add_argument("--fail-if", action="append", metavar="COND", help="exit 1 when COND holds, e.g. "
                    "'mean_delta_lp<-2' (repeatable; for CI guards)")
    au.add_argument("--seed", type=int, default=None, help="seed of the drift estimates (default: the weights "
                    "file's run seed, else 0)")
    au.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_data_args(au)
    au.set_defaults(handler="results:cmd_audit")

    be = sub.add_parser("bench", help="images/s of feature extraction and seconds per fine-tune step, per method")
    be.add_argument("--model", default="openclip:ViT-B-32@random", help="model name or spec (default "
                    "openclip:ViT-B-32@random; weights do not change the speed)")
    be.add_argument("--methods", type=_csv("names"), default=["ft", "ldifs"], help="comma-separated (default ft,ldifs)")
    be.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    be.add_argument("--batch", type=int, default=16, help="images per step and per extraction batch (default 16)")
    be.add_argument("--steps", type=int, default=3, help="timed steps per method, after one warm-up (default 3)")
    _add_data_args(be)
    be.set_defaults(handler="catalog:cmd_bench")

    dl = sub.add_parser("download", help="let torchvision fetch datasets into the data root (those it can fetch)")
    dl.add_argument("datasets", nargs="+", help="dataset names, e.g. cifar10 dtd")
    _add_data_args(dl)
    dl.set_defaults(handler="catalog:cmd_download")

    pm = sub.add_parser("pretrain-mini", help="pre-train the mini CLIP (regenerates the shipped weights)")
    pm.add_argument("--samples", type=int, default=None, help="captioned scenes per epoch (default 100000)")
    pm.add_argument("--epochs", type=int, default=None, help="(default 12)")
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights folder)")
    pm.set_defaults(handler="catalog:cmd_pretrain_mini")
    return p


