"""`forgetbench pretrain-mini`: contrastive pre-training of the mini CLIP on generated, captioned mini-world scenes.

The shipped weights come from this command with its defaults; the manifest beside them records the exact command,
seed and sha256. On the same software and CPU it regenerates them bit for bit.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from .atomic import atomic_write
from .data import mini
from .models import mini_clip
from .models.weights_io import save_atomic


@dataclass(frozen=True)
class PretrainConfig:
    samples: int = 100000  # captioned scenes per epoch
    epochs: int = 12
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0


@dataclass(frozen=True)
class PretrainingData:
    images: np.ndarray  # uint8 [n, H, W, 3]
    captions: list[str]
    image_codes: np.ndarray  # int [n, len(CONCEPT_KEYS)]: what each image shows
    caption_codes: np.ndarray  # int [n, len(CONCEPT_KEYS)]: what each caption names


def pretraining_data(n: int, seed: int) -> PretrainingData:
    """n captioned scenes: 45% single-object scenes, 29% counting scenes, 26% digits (train split glyphs only)."""
    rng = mini.stable_rng("pretrain", seed, mini.GENERATOR_VERSION)
    glyphs, digit_labels = mini.sklearn_digits()
    train_idx = mini.digits_split_indices()["train"]
    images = np.empty((n, mini.IMAGE_SIZE, mini.IMAGE_SIZE, 3), np.uint8)
    captions, image_codes, caption_codes = [], [], []
    for i in tqdm(range(n), desc="generating scenes", unit="img", leave=False, disable=None):
        kind, digit, glyph = rng.random(), None, None
        if kind < 0.45:
            scene = mini.random_scene(rng)
        elif kind < 0.74:
            scene = mini.random_scene(rng, count=int(rng.integers(1, len(mini.COUNTS) + 1)))
        else:
            j = train_idx[rng.integers(len(train_idx))]
            scene, digit, glyph = mini.random_scene(rng), int(digit_labels[j]), glyphs[j]
        images[i] = mini.render(scene, rng, digit=glyph)
        text, codes = mini.described(scene, rng, digit=digit)
        captions.append(text)
        caption_codes.append(codes)
        image_codes.append(mini.scene_codes(scene, digit))
    return PretrainingData(images, captions, np.array(image_codes), np.array(caption_codes))


def pretraining_pairs(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """n (image, caption) pairs of the pre-training distribution (ZSCL's reference data)."""
    data = pretraining_data(n, seed)
    return data.images, data.captions


def caption_aware_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                            matches: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss with every caption that is true of an image as a positive (UniCL, Yang et al.
    2022), not only its own. Short captions repeat within a batch ("something red."), and plain CLIP would push an
    image away from the identical caption of its neighbour; here the target is uniform over the true captions.
    ``matches`` [B, B] bool holds the diagonal, so every row and column has a positive."""
    logits = logit_scale * image_features @ text_features.T
    target = matches.float()
    image_to_text = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def to_model_input(images: np.ndarray, clip: torch.nn.Module) -> torch.Tensor:
    """uint8 HWC -> normalised float NCHW, exactly what the open_clip eval transform gives for 32x32 images."""
    cfg = clip.visual.preprocess_cfg
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)


def pretrain(cfg: PretrainConfig, out: Path | None = None, command: str = "forgetbench pretrain-mini") -> dict:
    """Pre-train the mini CLIP and write fp16 safetensors + manifest; returns the manifest."""
    start = time.time()
    data = pretraining_data(cfg.samples, cfg.seed)
    clip = mini_clip.build_untrained(cfg.seed)
    clip.train()
    x = to_model_input(data.images, clip)
    tokens = open_clip.get_tokenizer(mini_clip.CONFIG_NAME)(data.captions)
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = cfg.samples // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps)
                                              * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=total, desc="pre-training mini CLIP", unit="step")
    for _ in range(cfg.epochs):
        perm = torch.randperm(cfg.samples, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            image_features, text_features, logit_scale = clip(x[idx], tokens[idx])[:3]
            rows = idx.numpy()
            matches = torch.from_numpy(mini.caption_matches(data.image_codes[rows], data.caption_codes[rows]))
            loss = caption_aware_clip_loss(image_features, text_features, logit_scale, matches)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():  # CLIP's clamp of the learned temperature
                clip.logit_scale.clamp_(0, math.log(100))
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    out = Path(out) if out else mini_clip.WEIGHTS_DIR
    state = {k: v.half() for k, v in clip.state_dict().items()}
    sha = save_atomic(state, out / "mini-clip.safetensors", metadata={"config": mini_clip.CONFIG_NAME})
    manifest = {
        "file": "mini-clip.safetensors",
        "sha256": sha,
        "dtype": "float16",
        "open_clip_config": mini_clip.CONFIG_NAME,
        "command": command,
        "config": asdict(cfg),
        "generator_version": mini.GENERATOR_VERSION,
        "train_seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "final_loss": round(float(loss.item()), 4),
    }
    atomic_write(out / "mini-clip.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
