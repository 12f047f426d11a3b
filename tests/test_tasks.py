"""Task specs: schema, defaults, YAML errors with file:line, name lookup and registry cross-checks."""
from __future__ import annotations

import copy
import os
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgetbench import tasks
from forgetbench.errors import ForgetbenchError, SpecError, UnknownNameError
from forgetbench.registry import Registry
from forgetbench.tasks import TASKS, TaskSpec, check_names, load_task, load_task_text

SRC = "tasks/x.yaml"

VALID = """\
name: mini-shapes
version: 1
description: Fine-tune on shapes; measure the rest.
model: mini-clip
finetune:
  dataset: mini/shapes
  train_split: train
  val_split: val
  test_split: test
evaluate:
  datasets: [mini/colours, mini/textures, mini/positions, mini/counts, mini/digits]
  linear_probe: {C_grid: [0.1, 1.0, 10.0, 100.0], max_iter: 1000}
  zero_shot: true
  drift: [l2, kernel, otdd]
  checkpoints: 0
train:
  optimizer: adamw
  lr: 1.0e-3
  weight_decay: 0.1
  batch_size: 64
  epochs: 3
  warmup_steps: 20
  schedule: cosine
  grad_clip: 1.0
  head_init: zeroshot
  label_smoothing: 0.0
methods: [ft, lp, lp-ft, l2sp, ldifs, wise-ft]
method_params:
  l2sp: {alpha: 0.01}
seeds: [0, 1, 2]
"""

MINIMAL = """\
name: tiny
version: 2
model: m
finetune: {dataset: a}
evaluate: {datasets: [b]}
train: {lr: 0.5, batch_size: 8, steps: 10}
seeds: [7]
"""


def line_of(text: str, needle: str) -> int:
    """1-based line of the only line containing ``needle`` (the test's own count, not the loader's)."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def edit(old: str, new: str, text: str = VALID) -> str:
    assert text.count(old) == 1, old  # an edit that silently did nothing would make the test pass vacuously
    return text.replace(old, new)


def drop(line: str, text: str = VALID) -> str:
    return edit(line + "\n", "", text)


def error_of(text: str, source: str = SRC) -> str:
    with pytest.raises(SpecError) as info:
        load_task_text(text, source)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------ schema + defaults


def test_valid_spec_round_trips_through_plain_json():
    spec = load_task_text(VALID, SRC)
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON types only
    assert TaskSpec.from_dict(d) == spec
    assert TaskSpec.from_dict(json.loads(json.dumps(d))).to_dict() == d
    # what the file says survives the trip (compared with an independent parse, not with constants)
    raw = yaml.safe_load(VALID)
    raw["train"]["lr"] = float(raw["train"]["lr"])
    for section in ("finetune", "evaluate"):
        assert d[section] == raw[section]
    assert {k: d["train"][k] for k in raw["train"]} == raw["train"]
    assert d["method_params"] == raw["method_params"] and d["seeds"] == raw["seeds"]


def test_defaults_are_filled():
    d = load_task_text(MINIMAL, SRC).to_dict()
    assert d == {
        "name": "tiny", "version": 2, "description": "", "model": "m",
        "finetune": {"dataset": "a", "train_split": "train", "val_split": "val", "test_split": "test"},
        "evaluate": {"datasets": ["b"], "linear_probe": {"C_grid": [0.1, 1.0, 10.0, 100.0], "max_iter": 1000},
                     "zero_shot": True, "drift": [], "checkpoints": 0},
        "train": {"optimizer": "adamw", "lr": 0.5, "weight_decay": 0.0, "batch_size": 8, "epochs": None,
                  "steps": 10, "warmup_steps": 0, "schedule": "cosine", "grad_clip": None, "head_init": "zeroshot",
                  "label_smoothing": 0.0},
        "methods": ["ft"], "method_params": {}, "seeds": [7],
    }


def test_spec_is_immutable_and_params_are_plain():
    spec = load_task_text(VALID, SRC)
    with pytest.raises(AttributeError):
        spec.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.method_params["l2sp"]["alpha"] = 1.0  # type: ignore[index]
    assert spec.params_for("l2sp") == {"alpha": 0.01} and spec.params_for("ft") == {}


def test_exponent_floats_without_a_dot_are_numbers_and_safe_load_is_untouched():
    spec = load_task_text(edit("lr: 1.0e-3", "lr: 1e-3"), SRC)
    assert spec.train.lr == pytest.approx(1e-3)
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"  # our resolver did not leak into PyYAML's SafeLoader


# ------------------------------------------------------------------------------------------ errors with lines

# (id, yaml text, text of the line the error must point at, field named in the message, another expected word)
LINE_CASES = [
    ("lr-word", edit("lr: 1.0e-3", "lr: fast"), "lr: fast", "train.lr", "'fast'"),
    ("lr-zero", edit("lr: 1.0e-3", "lr: 0"), "lr: 0", "train.lr", "> 0"),
    ("lr-inf", edit("lr: 1.0e-3", "lr: .inf"), "lr: .inf", "train.lr", "> 0"),
    ("batch-bool", edit("batch_size: 64", "batch_size: true"), "batch_size", "train.batch_size", "boolean"),
    ("batch-zero", edit("batch_size: 64", "batch_size: 0"), "batch_size", "train.batch_size", ">= 1"),
    ("epochs-float", edit("epochs: 3", "epochs: 2.5"), "epochs", "train.epochs", "integer"),
    ("version-yes", edit("version: 1", "version: yes"), "version", "version", "boolean"),
    ("version-zero", edit("version: 1", "version: 0"), "version", "version", ">= 1"),
    ("seed-bool", edit("seeds: [0, 1, 2]", "seeds:\n  - 0\n  - true\n  - 2"), "- true", "seeds[1]", "boolean"),
    ("seed-negative", edit("seeds: [0, 1, 2]", "seeds: [0, -1]"), "seeds:", "seeds[1]", "integer"),
    ("seed-twice", edit("seeds: [0, 1, 2]", "seeds:\n  - 0\n  - 1\n  - 0  # again"), "again", "seeds[2]", "twice"),
    ("seeds-empty", edit("seeds: [0, 1, 2]", "seeds: []"), "seeds:", "seeds", "non-empty"),
    ("weight-decay", edit("weight_decay: 0.1", "weight_decay: -0.1"), "weight_decay", "train.weight_decay", ">= 0"),
    ("smoothing", edit("label_smoothing: 0.0", "label_smoothing: 1.0"), "label_smoothing", "train.label_smoothing",
     "[0, 1)"),
    ("warmup", edit("warmup_steps: 20", "warmup_steps: -1"), "warmup_steps", "train.warmup_steps", ">= 0"),
    ("grad-clip", edit("grad_clip: 1.0", "grad_clip: 0"), "grad_clip", "train.grad_clip", "> 0"),
    ("checkpoints", edit("checkpoints: 0", "checkpoints: -2"), "checkpoints", "evaluate.checkpoints", ">= 0"),
    ("zero-shot-int", edit("zero_shot: true", "zero_shot: 1"), "zero_shot", "evaluate.zero_shot", "true or false"),
    ("c-grid-item", edit("C_grid: [0.1, 1.0, 10.0, 100.0]", "C_grid: [0.1, 0]"), "linear_probe",
     "evaluate.linear_probe.C_grid[1]", "> 0"),
    ("max-iter", edit("max_iter: 1000", "max_iter: 0"), "linear_probe", "evaluate.linear_probe.max_iter", ">= 1"),
    ("optimizer", edit("optimizer: adamw", "optimizer: adam"), "optimizer", "train.optimizer", "'adamw'"),
    ("schedule", edit("schedule: cosine", "schedule: linear"), "schedule", "train.schedule", "constant"),
    ("head-init", edit("head_init: zeroshot", "head_init: lp"), "head_init", "train.head_init", "linear-probe"),
    ("drift", edit("drift: [l2, kernel, otdd]", "drift:\n    - l2\n    - l3"), "- l3", "evaluate.drift[1]", "kernel"),
    ("name-format", edit("name: mini-shapes", "name: Mini Shapes"), "name:", "name", "lower-case"),
    ("datasets-not-list", edit("datasets: [mini/colours, mini/textures, mini/positions, mini/counts, mini/digits]",
                               "datasets: mini/colours"), "datasets", "evaluate.datasets", "list"),
    ("model-not-str", edit("model: mini-clip", "model: [a]"), "model", "model", "model name"),
    ("param-nested", edit("l2sp: {alpha: 0.01}", "l2sp:\n    alpha: {a: 1}"), "alpha", "method_params.l2sp.alpha",
     "number"),
    ("unknown-top", VALID + "seed: [1]\n", "seed: [1]", "seed", "did you mean 'seeds'?"),
    ("unknown-train", edit("warmup_steps: 20", "warmup: 20"), "warmup:", "train.warmup", "'warmup_steps'"),
    ("unknown-probe", edit("max_iter: 1000", "max_iters: 1000"), "linear_probe",
     "evaluate.linear_probe.max_iters", "'max_iter'"),
    ("unknown-lists-accepted", edit("  schedule: cosine", "  sched: cosine"), "sched:", "train.sched",
     "accepted: batch_size, batchnorm, epochs"),
    ("missing-dataset", drop("  dataset: mini/shapes"), "finetune:", "finetune.dataset", "missing"),
    ("missing-eval-datasets",
     drop("  datasets: [mini/colours, mini/textures, mini/positions, mini/counts, mini/digits]"),
     "evaluate:", "evaluate.datasets", "missing"),
    ("missing-lr", drop("  lr: 1.0e-3"), "train:", "train.lr", "missing"),
    ("missing-batch", drop("  batch_size: 64"), "train:", "train.batch_size", "missing"),
    ("missing-length", drop("  epochs: 3"), "train:", "train.epochs", "train.steps"),
    ("epochs-and-steps", edit("epochs: 3", "epochs: 3\n  steps: 100"), "steps: 100", "train.steps", "not both"),
    ("ft-in-eval", edit("mini/counts, mini/digits]", "mini/counts,\n    mini/shapes]"), "mini/shapes]",
     "evaluate.datasets[4]", "fine-tune dataset"),
    ("eval-twice", edit("mini/counts, mini/digits]", "mini/counts,\n    mini/colours]"), "mini/colours]",
     "evaluate.datasets[4]", "evaluate.datasets[0]"),
    ("method-twice", edit("ldifs, wise-ft]", "ldifs,\n  ft]"), "  ft]", "methods[5]", "twice"),
    ("duplicate-key", edit("  lr: 1.0e-3", "  lr: 1.0e-3\n  lr: 2.0e-3"), "lr: 2.0e-3", "train.lr", "duplicate"),
    ("section-not-mapping", edit("finetune:\n  dataset: mini/shapes\n  train_split: train\n  val_split: val\n"
                                 "  test_split: test", "finetune: mini/shapes"), "finetune:", "finetune", "mapping"),
]


@pytest.mark.parametrize("text,needle,field,word", [c[1:] for c in LINE_CASES], ids=[c[0] for c in LINE_CASES])
def test_errors_name_file_line_and_field(text, needle, field, word):
    msg = error_of(text)
    assert msg.startswith(f"{SRC}:{line_of(text, needle)}: {field}: "), msg
    assert word in msg


@pytest.mark.parametrize("key", ["name", "version", "model", "seeds"])
def test_missing_top_level_field_names_file_and_field(key):
    text = "\n".join(line for line in VALID.splitlines() if not line.startswith(f"{key}:")) + "\n"
    assert text != VALID
    assert error_of(text).startswith(f"{SRC}: {key}: missing required field")


@pytest.mark.parametrize("text,needle,column", [
    ("name: a\ntrain:\n  lr: 1\n bad: 2\n", " bad: 2", 2),  # indentation that closes no block
    ("name: a\ntrain:\n\tlr: 1\n", "\tlr", 1),  # tabs are not YAML indentation
    ("name: a\nmodel: b: c\n", "model: b: c", 9),
])
def test_malformed_yaml_gives_file_line_column(text, needle, column):
    msg = error_of(text)
    assert msg.startswith(f"{SRC}:{line_of(text, needle)}:{column}: invalid YAML"), msg


@pytest.mark.parametrize("text,word", [
    ("- a\n- b\n", "top level must be a mapping"),
    ("just a string\n", "top level must be a mapping"),
    ("# only a comment\n", "empty"),
    ("a: 1\n---\nb: 2\n", "single document"),
    ("name: !!python/object/apply:os.system ['true']\n", "constructor"),
    ("name: a\nmodel: \x07\n", "not allowed"),
])
def test_unusable_documents(text, word):
    msg = error_of(text)
    assert msg.startswith(SRC) and word in msg, msg


def valid_dict() -> dict:
    return load_task_text(VALID, SRC).to_dict()


def with_value(d: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(d)
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


INT_FIELDS = [("version",), ("train", "batch_size"), ("train", "epochs"), ("train", "warmup_steps"),
              ("evaluate", "checkpoints"), ("evaluate", "linear_probe", "max_iter"), ("seeds", 0)]


@pytest.mark.parametrize("path", INT_FIELDS, ids=[".".join(map(str, p)) for p in INT_FIELDS])
@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_an_int(path, value):
    d = valid_dict()
    TaskSpec.from_dict(with_value(d, path, 9))  # the same slot takes a real int
    with pytest.raises(SpecError, match="boolean") as info:
        TaskSpec.from_dict(with_value(d, path, value), source="<mine>")
    field = ".".join(path[:-1]) + (f"[{path[-1]}]" if isinstance(path[-1], int) else f".{path[-1]}")
    assert str(info.value).startswith(f"<mine>: {field.lstrip('.')}: ")


def test_odd_keys_still_point_at_their_section():
    d = with_value(valid_dict(), ("train", "x[.y"), 1)
    with pytest.raises(SpecError, match=r"^<d>:4: train\.'x\[\.y': unknown key"):
        TaskSpec.from_dict(d, "<d>", lines={"train": 4})


def test_from_dict_rejects_non_string_keys_and_non_mappings():
    with pytest.raises(SpecError, match="keys must be strings"):
        TaskSpec.from_dict({**valid_dict(), 3: "x"})
    with pytest.raises(SpecError, match="top level must be a mapping"):
        TaskSpec.from_dict(["name"])


# ------------------------------------------------------------------------------------------ lookup by name


def write_task(directory, name: str, text: str = MINIMAL):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(edit("name: tiny", f"name: {name}", text))
    return path


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    d = tmp_path / "mytasks"
    monkeypatch.setenv(tasks.ENV_TASKS_PATH, str(d))
    d.mkdir()
    return d


def test_lookup_by_name_and_by_path(task_dir):
    path = write_task(task_dir, "zz-alpha")
    assert "zz-alpha" in TASKS.names()
    by_name = load_task("zz-alpha")
    by_path = load_task(str(path))
    assert by_name == by_path and by_name.name == "zz-alpha"
    assert task_dir.resolve() in [d.resolve() for d in tasks.tasks_dirs()]


def test_unknown_name_suggests_close_ones(task_dir):
    write_task(task_dir, "zz-alpha")
    with pytest.raises(UnknownNameError, match=r"did you mean 'zz-alpha'\?"):
        load_task("zz-alpah")


def test_registry_follows_the_environment(tmp_path, monkeypatch):
    first, second = tmp_path / "one", tmp_path / "two"
    write_task(first, "zz-one")
    write_task(second, "zz-two")
    monkeypatch.setenv(tasks.ENV_TASKS_PATH, str(first))
    assert "zz-one" in TASKS and "zz-two" not in TASKS
    monkeypatch.setenv(tasks.ENV_TASKS_PATH, f"{first}{os.pathsep}{second}")
    assert load_task("zz-two").name == "zz-two"


def test_name_must_match_file_stem_inside_a_tasks_dir(task_dir, tmp_path):
    text = edit("name: tiny", "name: other", MINIMAL)
    inside = task_dir / "zz-stem.yaml"
    inside.write_text(text)
    with pytest.raises(SpecError) as info:
        load_task("zz-stem")
    assert str(info.value).startswith(f"{inside}:{line_of(text, 'name:')}: name: ")
    assert "'zz-stem'" in str(info.value)
    outside = tmp_path / "elsewhere" / "zz-stem.yaml"
    outside.parent.mkdir()
    outside.write_text(text)
    assert load_task(str(outside)).name == "other"  # a loose file may be named anything


def test_duplicate_task_names_across_dirs(tmp_path, monkeypatch):
    write_task(tmp_path / "one", "zz-dup")
    write_task(tmp_path / "two", "zz-dup")
    monkeypatch.setenv(tasks.ENV_TASKS_PATH, f"{tmp_path / 'one'}{os.pathsep}{tmp_path / 'two'}")
    with pytest.raises(SpecError, match="also defined"):
        load_task("zz-dup")


def test_missing_tasks_dir_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv(tasks.ENV_TASKS_PATH, str(tmp_path / "nope"))
    with pytest.raises(SpecError, match=tasks.ENV_TASKS_PATH):
        load_task("anything")
    with pytest.raises(SpecError, match="no such task file"):
        load_task(str(tmp_path / "absent.yaml"))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError, match="UTF-8"):
        load_task(str(binary))


# ------------------------------------------------------------------------------------------ check_names


class FakeMethod:
    def __init__(self, limit: float | None = None):
        self.limit, self.seen = limit, []

    def check_params(self, params):
        self.seen.append(params)
        if self.limit is not None and params.get("alpha", 0) > self.limit:
            raise SpecError(f"alpha must be <= {self.limit}")


def registries(method_objects: dict | None = None):
    datasets, models, methods = Registry("dataset"), Registry("model"), Registry("method")
    for name in ["mini/shapes", "mini/colours", "mini/textures", "mini/positions", "mini/counts", "mini/digits"]:
        datasets.register(name, object())
    models.register("mini-clip", object())
    for name in ["ft", "lp", "lp-ft", "l2sp", "ldifs", "wise-ft"]:
        methods.register(name, (method_objects or {}).get(name, object()))
    return datasets, models, methods


def test_check_names_accepts_known_names_and_passes_params():
    l2sp = FakeMethod()
    check_names(load_task_text(VALID, SRC), *registries({"l2sp": l2sp}))
    assert l2sp.seen == [{"alpha": 0.01}] and type(l2sp.seen[0]) is dict


def test_check_names_unknown_dataset_has_source_field_and_suggestion():
    text = edit("mini/textures, mini/positions", "mini/textures,\n    mini/colour, mini/positions")
    text = edit("mini/colours, ", "", text)
    spec = load_task_text(text, SRC)
    with pytest.raises(UnknownNameError) as info:
        check_names(spec, *registries())
    msg = str(info.value)
    assert msg.startswith(f"{SRC}:{line_of(text, 'mini/colour,')}: evaluate.datasets[1]: unknown dataset 'mini/colour'")
    assert "did you mean 'mini/colours'" in msg


@pytest.mark.parametrize("old,new,field,kind", [
    ("model: mini-clip", "model: mini-clap", "model", "model"),
    ("dataset: mini/shapes", "dataset: mini/shape", "finetune.dataset", "dataset"),
    ("lp-ft, l2sp", "lp-ft, l2-sp", "methods[3]", "method"),
    ("l2sp: {alpha", "l2spp: {alpha", "method_params.l2spp", "method"),
])
def test_check_names_unknown_names(old, new, field, kind):
    text = edit(old, new)
    with pytest.raises(UnknownNameError) as info:
        check_names(load_task_text(text, SRC), *registries())
    assert str(info.value).startswith(f"{SRC}:{line_of(text, new)}: {field}: unknown {kind} ")
    assert "did you mean" in str(info.value)


def test_check_names_prefixes_check_params_errors():
    text = edit("alpha: 0.01", "alpha: 5")
    with pytest.raises(SpecError) as info:
        check_names(load_task_text(text, SRC), *registries({"l2sp": FakeMethod(limit=1.0)}))
    assert str(info.value) == f"{SRC}:{line_of(text, 'alpha: 5')}: method_params.l2sp: alpha must be <= 1.0"


# ------------------------------------------------------------------------------------------ properties

KEYS = st.sampled_from(["name", "version", "model", "finetune", "evaluate", "train", "seeds", "methods",
                        "method_params", "dataset", "datasets", "lr", "batch_size", "epochs", "steps", "drift",
                        "linear_probe", "C_grid", "zero_shot", "l2sp"]) | st.text(max_size=5)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
           | st.sampled_from(["mini/a", "adamw", "sgd", "l2", "ft"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                      max_leaves=20)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_spec_errors(fn, *args) -> None:
    try:
        fn(*args)
    except SpecError as e:
        assert "\n" not in str(e)
    # any other exception type propagates and fails the property


@FAST
@given(st.dictionaries(KEYS | st.integers(), VALUES, max_size=8))
def test_random_mappings_raise_only_spec_errors(d):
    only_spec_errors(TaskSpec.from_dict, d)


def _leaf_paths(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaf_paths(v, prefix + (k,))
        yield prefix + (k,)


VALID_PATHS = list(_leaf_paths(yaml.safe_load(VALID)))


@FAST
@given(st.sampled_from(VALID_PATHS), VALUES)
def test_one_bad_value_in_a_valid_spec_raises_only_spec_errors(path, value):
    only_spec_errors(TaskSpec.from_dict, with_value(yaml.safe_load(VALID), path, value))


TOKENS = st.sampled_from(["name:", "train:", "lr:", "seeds:", "- ", "  ", "\n", "\t", ":", "[", "]", "{", "}", ",",
                          "&a ", "*a", "<<: *a", "!!python/name:os.system", "!x ", "1e-3", "true", "null", "~", "0",
                          "'", '"', "#", "?", "|", ">", "---", "%YAML 1.1", "\x00", "é", "mini/a"])


@FAST
@given(st.lists(TOKENS | st.text(max_size=3), max_size=30).map("".join))
def test_random_yaml_text_raises_only_spec_errors(text):
    only_spec_errors(load_task_text, text, SRC)


@FAST
@given(st.integers(0, len(VALID)), st.integers(0, 6), st.text(max_size=4))
def test_damaged_valid_yaml_raises_only_spec_errors(at, cut, insert):
    only_spec_errors(load_task_text, VALID[:at] + insert + VALID[at + cut:], SRC)


def test_errors_are_forgetbench_errors():
    assert issubclass(SpecError, ForgetbenchError) and issubclass(UnknownNameError, ForgetbenchError)
