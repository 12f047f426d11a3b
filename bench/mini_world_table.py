"""Zero-shot and linear-probe accuracy of the shipped mini CLIP on every mini dataset (the README's table): the six
concepts its captions name (held out: it should know them well) and the fine-tune targets whose attribute no caption
names (it should not: linear probe <= 75%, zero-shot <= 50%, so that fine-tuning has something to gain).

    python bench/mini_world_table.py              # print the table
    python bench/mini_world_table.py --readme     # also rewrite the table between the README's markers
    python bench/mini_world_table.py --weights DIR  # a candidate from `forgetbench pretrain-mini --out DIR`
    python bench/mini_world_table.py --c-grid 0.1,1,10,100,1000,10000 --max-iter 5000  # a wider probe than the tasks'
"""
import argparse
import json
import re
import time
from pathlib import Path

from tabulate import tabulate

from forgetbench.data import get_dataset
from forgetbench.data.mini_attributes import ATTRIBUTES
from forgetbench.evaluate.probe import DEFAULT_C_GRID, linear_probe, zeroshot_accuracy, zeroshot_weights
from forgetbench.features import cached_extract
from forgetbench.models import get_model, mini_clip, state_dict_hash

MINI = ["mini/shapes", "mini/colours", "mini/textures", "mini/positions", "mini/counts", "mini/digits"]
TARGETS = [f"mini/{key}" for key in ATTRIBUTES]
README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- mini-world-table:begin -->", "<!-- mini-world-table:end -->"


def candidate(weights_dir: Path):
    """The mini CLIP with weights written by `forgetbench pretrain-mini --out weights_dir` (hash checked)."""
    manifest = json.loads((weights_dir / "mini-clip.json").read_text())
    clip = mini_clip.load_pretrained(weights_dir / manifest["file"], manifest["sha256"])
    return mini_clip.as_model(clip)


def table(weights_dir: Path | None = None, c_grid=DEFAULT_C_GRID, max_iter: int = 1000) -> str:
    model = candidate(weights_dir) if weights_dir else get_model("mini-clip")
    h = state_dict_hash(model.visual)
    rows = []
    for name in MINI + TARGETS:
        ds = get_dataset(name)
        f = {s: cached_extract(model.visual, model, ds, s, weights_hash=h) for s in ("train", "val", "test")}
        zs = zeroshot_accuracy(*f["test"], zeroshot_weights(model, ds))
        lp = linear_probe(f["train"], f["val"], f["test"], c_grid, max_iter)
        role = "fine-tune target" if name in TARGETS else "held-out concept"
        sizes = " / ".join(str(len(ds.split(s))) for s in ("train", "val", "test"))
        rows.append([name, role, len(ds.classnames), sizes, f"{zs:.1f}", f"{lp.acc:.1f}",
                     f"{100 / len(ds.classnames):.1f}"])
    return tabulate(rows, headers=["dataset", "role", "classes", "train / val / test", "zero-shot %", "linear probe %",
                                   "chance %"], tablefmt="github")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--weights", type=Path, help="evaluate the weights in this folder instead of the shipped ones")
    ap.add_argument("--c-grid", type=lambda t: tuple(float(c) for c in t.split(",")), default=DEFAULT_C_GRID,
                    help="the linear probe's C values (default: the tasks' grid)")
    ap.add_argument("--max-iter", type=int, default=1000, help="the linear probe's iterations (default 1000)")
    args = ap.parse_args()
    if args.readme and (args.weights or args.c_grid != DEFAULT_C_GRID or args.max_iter != 1000):
        raise SystemExit("--readme describes the shipped weights under the tasks' probe: leave out --weights, "
                         "--c-grid and --max-iter")
    t = time.time()
    text = table(args.weights, args.c_grid, args.max_iter)
    print(text)
    print(f"({time.time() - t:.0f}s)")
    if args.readme:
        readme = README.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        new, n = re.subn(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: block, readme, flags=re.S)
        if n != 1:
            raise SystemExit(f"README.md needs exactly one {BEGIN} ... {END} block")
        README.write_text(new)


if __name__ == "__main__":
    main()
