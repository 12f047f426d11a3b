"""A tiny task for pipeline tests: two small mini-world datasets, a few steps; seconds instead of minutes."""
from forgetbench.data import DATASETS, ArraySplit, ImageDataset, mini
from forgetbench.records import CheckpointHeldout, summarize_heldout
from forgetbench.tasks import TaskSpec

SIZES = {"train": 96, "val": 48, "test": 64}


def _tiny(name, concept, classnames):
    def build():
        return ImageDataset(
            name=name, classnames=classnames, templates=mini.TEMPLATES[concept],
            split_builders={s: (lambda s=s, n=n: ArraySplit(*mini.generate_concept_split(concept, s, n)))
                            for s, n in SIZES.items()},
            fingerprint=f"{name}:{SIZES}:gen{mini.GENERATOR_VERSION}")
    return build


for _name, _concept, _classes in [("test/shapes", "shape", mini.SHAPES), ("test/colours", "colour", list(mini.COLOURS))]:
    if _name not in DATASETS:
        DATASETS.register(_name, _tiny(_name, _concept, _classes))


def tiny_task(steps=3, methods=("ft",), drift=("l2", "kernel", "otdd"), **train):
    return TaskSpec.from_dict({
        "name": "tiny", "version": 1, "model": "mini-clip",
        "finetune": {"dataset": "test/shapes"},
        "evaluate": {"datasets": ["test/colours"], "drift": list(drift), "linear_probe": {"C_grid": [1.0, 10.0]}},
        "train": {"lr": 1e-3, "batch_size": 32, "steps": steps, "warmup_steps": 1, "grad_clip": 1.0, **train},
        "methods": list(methods), "seeds": [0],
    })


RESULT_SCHEMA = "forgetbench.result/1"  # the schema of a fine-tune's record, as it is on disk


def summary_of(heldout: dict, weight_drift=None) -> dict:
    """``summarize_heldout`` of held-out metrics written as plain dicts (as a record holds them)."""
    return summarize_heldout({name: CheckpointHeldout(**m) for name, m in heldout.items()}, weight_drift=weight_drift)


SUITE_TINY = """\
name: tiny
evaluate:
  datasets: [test/colours]
  linear_probe: {C_grid: [1.0, 10.0]}
  drift: [l2, kernel, otdd]
"""  # the held-out part of tiny_task, as a suite file
