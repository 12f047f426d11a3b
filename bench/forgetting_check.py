"""Quick check that the mini world shows concept forgetting: plain fine-tuning on one concept, linear-probe accuracy
of every other concept before and after.

    python bench/forgetting_check.py [--targets mini/shapes,mini/textures] [--epochs 4]
"""
import argparse
import dataclasses
import time

from tabulate import tabulate

from forgetbench.run import run_one
from forgetbench.tasks import load_task

MINI = ["mini/shapes", "mini/colours", "mini/textures", "mini/positions", "mini/counts", "mini/digits"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="mini/shapes,mini/textures")
    ap.add_argument("--epochs", type=int, default=None, help="default: the mini-shapes task's")
    args = ap.parse_args()
    base = load_task("mini-shapes")
    for target in args.targets.split(","):
        task = dataclasses.replace(
            base, name=f"check-{target.split('/')[1]}",
            finetune=dataclasses.replace(base.finetune, dataset=target),
            evaluate=dataclasses.replace(base.evaluate, datasets=tuple(d for d in MINI if d != target), drift=()),
            train=dataclasses.replace(base.train, epochs=args.epochs or base.train.epochs))
        t = time.time()
        rec = run_one(task, "ft", 0, progress=False).to_json()
        m = rec["metrics"]
        print(f"\nft on {target} ({task.train.epochs} epochs, lr {task.train.lr}): target {m['target']['acc']:.1f}% "
              f"(zero-shot {m['target']['acc_reference']:.1f}%), {time.time() - t:.0f}s")
        print(tabulate([[d, f"{h['lp_reference']:.1f}", f"{h['lp']:.1f}", f"{h['delta_lp']:+.1f}"]
                        for d, h in m["heldout"].items()], headers=["held-out", "LP before", "LP after", "ΔLP"],
                       tablefmt="github"))


if __name__ == "__main__":
    main()
