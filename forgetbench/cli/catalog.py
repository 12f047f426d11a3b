"""Commands about what forgetbench knows and has: ``ls``, ``validate``, ``bench``, ``download``, ``pretrain-mini``."""
from __future__ import annotations

from ..bench import bench
from ..data import DATASETS
from ..data.real import by_name, download
from ..evaluate.drift_metrics import DRIFT_METRICS
from ..methods import METHODS
from ..models import MODELS
from ..models.specs import SYNTAX
from ..pretrain import PretrainConfig, pretrain
from ..protocol import PROTOCOLS
from ..report.methods_table import methods_markdown
from ..tasks import TASKS, check_names, load_task


def cmd_ls(args) -> int:
    if args.markdown:
        print(methods_markdown())
        return 0
    real_datasets = by_name()
    kinds = {"datasets": DATASETS, "models": MODELS, "methods": METHODS, "tasks": TASKS, "protocols": PROTOCOLS,
             "drift-metrics": DRIFT_METRICS}
    for kind in [args.what] if args.what else list(kinds):
        print(f"{kind}:")
        for name in kinds[kind].names():
            extra = ""
            if kind == "methods":
                cls = METHODS.get(name)
                extra = f"  {cls.description}" + (f" (defaults: {cls.defaults})" if cls.defaults else "")
            elif kind == "datasets" and name in real_datasets:
                spec = real_datasets[name]
                extra = f"  {spec.title}, read from DATA_ROOT/{spec.folder}/" + (
                    f" or {spec.system_folder}/" if spec.system_folder else "")
            elif kind == "models" and hasattr(MODELS.get(name), "distribution"):  # weights from an installed package
                builder = MODELS.get(name)
                options = "".join(f"[?{k}=N]" for k in builder.options)
                extra = f"{options}  {builder.timm_arch}, weights from the Python package {builder.distribution}"
            elif kind == "protocols":
                extra = f"  {PROTOCOLS.get(name).description}"
            elif kind == "drift-metrics":
                extra = f"  {DRIFT_METRICS.get(name).description}"
            print(f"  {name}{extra}")
        if kind == "models":
            print(f"  (and any spec: {SYNTAX})")
    return 0


def cmd_validate(args) -> int:
    for name in args.tasks:
        task = load_task(name)
        check_names(task, DATASETS, MODELS, METHODS)
        print(f"{name}: ok ({task.name} v{task.version})")
    return 0


def cmd_bench(args) -> int:
    bench(args.model, methods=args.methods, device=args.device or "cpu", batch=args.batch, steps=args.steps)
    return 0


def cmd_download(args) -> int:
    for name in args.datasets:
        print(f"{name}: {download(name)}")
    return 0


def cmd_pretrain_mini(args) -> int:
    given = {k: v for k, v in (("samples", args.samples), ("epochs", args.epochs), ("seed", args.seed))
             if v is not None and v != getattr(PretrainConfig, k)}
    cfg = PretrainConfig(**given)
    command = "forgetbench pretrain-mini" + "".join(f" --{k} {v}" for k, v in given.items())
    manifest = pretrain(cfg, out=args.out, command=command)
    print(f"wrote {manifest['file']} (sha256 {manifest['sha256']}) in {manifest['train_seconds']}s")
    return 0
