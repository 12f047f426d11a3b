"""``forgetbench bench``: how fast this machine extracts features and takes fine-tuning steps, per method.

The numbers feed the GPU-hour estimates of the paper tasks (README, "Reproducing the papers"): a run costs about
(training steps x step time) + (images evaluated x 2 encoders / extraction rate). Weights do not change the speed,
so random ones are the default; images are random too (no data needed). Step times are measured through the real
training loop (``forgetbench.train.finetune``) with each method's hooks, after one warm-up step.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .data import ArraySplit, ImageDataset
from .evaluate.probe import zeroshot_weights
from .features import extract
from .heads import Head, zeroshot_head
from .methods import FinetuneContext, get_method
from .models import get_model
from .tasks import TaskSpec
from .train import finetune

DEFAULT_MODEL = "openclip:ViT-B-32@random"
N_CLASSES = 10


def _fake(n: int, size: int = 32) -> ImageDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    split = ArraySplit(images, np.arange(n) % N_CLASSES)
    return ImageDataset(name="bench/random", classnames=[f"class {i}" for i in range(N_CLASSES)],
                        templates=["a photo of a {}."], split_builders={"train": lambda: split},
                        fingerprint=f"bench:{n}")


def _task(model_spec: str, batch: int, steps: int) -> TaskSpec:
    """The protocol of the paper tasks (AdamW, wd 0.1, grad clip 1.0) at the benchmark's batch and step count."""
    return TaskSpec.from_dict({
        "name": "bench", "version": 1, "model": model_spec, "finetune": {"dataset": "bench/random"},
        "evaluate": {"datasets": ["bench/none"]},
        "train": {"lr": 1e-5, "weight_decay": 0.1, "batch_size": batch, "steps": steps, "grad_clip": 1.0},
        "seeds": [0]})


@torch.inference_mode()
def _forward_rate(model, x: torch.Tensor, repeats: int) -> float:
    """Images per second of the encoder's forward pass alone (bf16 autocast on CUDA, as training uses)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if x.is_cuda else torch.autocast("cpu", enabled=False)
    with autocast:
        model.visual(x[:2])  # warm-up: allocations, kernel selection
        _sync(x)
        t = time.perf_counter()
        for _ in range(repeats):
            model.visual(x)
        _sync(x)
    return repeats * len(x) / (time.perf_counter() - t)


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def step_times(model, method_name: str, batch: int, steps: int, device: str) -> list[float]:
    """Seconds of each of ``steps`` training steps after one warm-up step (data loading included)."""
    method = get_method(method_name)()
    task = _task(model.name, batch, steps + 1)
    data = _fake(batch * 2)
    # the zero-shot head a run would start from (methods such as FLYP need the text tower)
    head = zeroshot_head(zeroshot_weights(model, data), model.logit_scale, device) if model.has_text else \
        Head(model.feature_dim, N_CLASSES).to(device)
    ctx = FinetuneContext.start(model, method, head, task, data, device)
    stamps = []

    def on_step(step):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    finetune(ctx, method, task.train, data.split("train"), seed=0, progress=False, on_step=on_step)
    return list(np.diff(stamps))


def bench(model_spec: str = DEFAULT_MODEL, methods=("ft", "ldifs"), device: str = "cpu", batch: int = 16,
          steps: int = 3, repeats: int = 3, out=print) -> dict:
    """Measure and print; returns the numbers (images/s, seconds per step by method)."""
    t = time.time()
    model = get_model(model_spec)
    model.visual.to(device).eval()
    size = tuple(model.preprocess(_fake(1).split("train")[0][0]).shape)
    threads = f", {torch.get_num_threads()} threads" if device == "cpu" else ""
    out(f"forgetbench bench: {model_spec} on {device}{threads}; batch {batch}, input {size[1]}x{size[2]} "
        f"(model built in {time.time() - t:.1f}s)")
    x = torch.randn(batch, *size, device=device)
    result = {"model": model_spec, "device": device, "batch": batch,
              "forward_images_per_s": _forward_rate(model, x, repeats)}
    out(f"  extraction, encoder forward (inference mode):          {result['forward_images_per_s']:8.1f} images/s")
    data = _fake(batch * repeats)
    t = time.perf_counter()
    extract(model.visual, model, data, "train", device)
    result["extract_images_per_s"] = len(data.split("train")) / (time.perf_counter() - t)
    out(f"  extraction, features.extract (with preprocessing):     {result['extract_images_per_s']:8.1f} images/s")
    result["step_s"] = {}
    for name in methods:
        times = step_times(model, name, batch, steps, device)
        result["step_s"][name] = float(np.mean(times))
        out(f"  fine-tune step, {name:<10} {result['step_s'][name]:7.2f} s/step  ({batch / result['step_s'][name]:6.1f} "
            f"images/s; mean of {len(times)} steps after 1 warm-up)")
    return result
