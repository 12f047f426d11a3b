"""``forgetbench run TASK --dry-run`` for a prompt-tuning task: what a run would read, and one step per method.

Like the fine-tune's dry run (``forgetbench.dryrun``): every dataset's class count and base/new split, where the
weights and files would be read from (missing ones fail it unless ``--allow-missing``), the model built (seeded random
weights of its architecture when its own are absent), the context checked against the tokenizer, and one optimiser
step of each method on random images carrying the dataset's real class names. Nothing is written.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from ..dryrun import _scratch_cache, build_model, dataset_info, fake_dataset, missing_inputs, refuse_missing
from ..errors import DataError
from ..features import extract
from ..methods import get_method
from ..prompt_tuning import PromptContext, PromptLearner, base_new_classes
from .prompt_tuning import train_prompt


def dry_run_prompt(protocol: Any, task: Any, methods: list[str], device: str, batch: int, seed: int, out: Any,
                   allow_missing: bool) -> None:
    spec = task.prompt_tuning
    missing = missing_inputs(task, list(spec.datasets))
    refuse_missing(task, missing, allow_missing)
    out(f"dry run of {task.name} v{task.version} (nothing is written): {protocol.describe(task)}")
    t = time.time()
    model, where, built_from = build_model(task)
    if model.text_model is None:
        raise DataError(f"model {task.model!r} has no open_clip text tower: prompt tuning needs one")
    model.text_model.to(device).eval()
    out(f"  model {task.model}: weights {where}; built {built_from} in {time.time() - t:.1f}s")
    tr = task.train
    out(f"  train: {tr.optimizer} lr {tr.lr:g}, weight decay {tr.weight_decay:g}, batch {tr.batch_size}, "
        f"{f'{tr.epochs} epochs' if tr.epochs is not None else f'{tr.steps} steps'}"
        f"{' (' + ', '.join(f'{k}: {v}' for k, v in spec.epochs.items()) + ')' if spec.epochs else ''}, warm-up "
        f"{tr.warmup_steps}, {tr.schedule}; here: one step at batch {batch} on random images")
    one_step = dataclasses.replace(task, train=dataclasses.replace(tr, steps=1, epochs=None, batch_size=batch,
                                                                   warmup_steps=0))
    with _scratch_cache():
        for name in spec.datasets:
            classes, templates, location = dataset_info(name)
            base, new = base_new_classes(len(classes), spec.split)
            out(f"  dataset {name}: {len(classes)} classes ({len(base)} base, {len(new)} new), {spec.shots} shots "
                f"x {len(base)} = {spec.shots * len(base)} training images; {location}")
            fake = fake_dataset(name, classes, templates, ("train",), n=max(2 * batch, 8), seed=seed)
            features, labels = extract(model.visual.to(device), model, fake, "train", device)
            text = torch.nn.functional.normalize(model.encode_text(
                [templates[0].format(classes[c]) for c in base]).to(device), dim=-1)
            for method_name in methods:
                cls = get_method(method_name)
                method = cls(**task.params_for(cls.name))
                learner = PromptLearner(model, [classes[c] for c in base], spec.context_tokens, spec.context_init,
                                        seed, device)
                ctx = PromptContext(learner=learner, handcrafted=text, dataset=name,
                                    classnames=[classes[c] for c in base], task=one_step, device=device,
                                    train_features=torch.from_numpy(features).to(device),
                                    train_labels=torch.from_numpy(labels % len(base)).to(device))
                loss = train_prompt(method, ctx, 1, seed, model.logit_scale)
                out(f"    method {method.name}: loss {loss:.4f}")
    if missing:
        out(f"dry run INCOMPLETE: {len(methods)} method(s) stepped on random weights and images; NOT checked, "
            f"because missing here: {'; '.join(missing)}; no record written")
    else:
        out(f"dry run ok: {len(methods)} method(s) stepped on {len(spec.datasets)} dataset(s); no record written")
