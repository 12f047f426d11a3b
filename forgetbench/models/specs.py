"""Model spec strings: any open_clip or timm model, by name and weights, without registering it first.

    openclip:ARCH@TAG            open_clip architecture with a pretrained tag   openclip:ViT-B-32@openai
    openclip:ARCH@FILE           ... with weights from a file                   openclip:ViT-B-16@/w/clip.safetensors
    timm:NAME                    timm model with its default pre-trained weights timm:vit_base_patch14_dinov2.lvd142m
    timm:NAME@FILE               ... with weights from a file
    ...@random                   freshly initialised weights (seeded; for benchmarks and dry runs)
    timm:NAME?img_size=224       options: img_size (timm only) sets the input resolution
    finetuned:FILE               a fine-tuned image encoder saved by ``save_finetuned`` or ``run --save-weights``

Parsing and name checks touch no weights, so task files validate anywhere; weights are looked up (offline, in the
Hugging Face cache, or the given file) only when the model is built.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError, UnknownNameError, WeightsError
from .base import MODELS, Model, parse_options

FAMILIES = ("openclip", "timm", "finetuned")
SYNTAX = ("openclip:ARCH@TAG|FILE|random, timm:NAME[@FILE|random][?img_size=N], finetuned:FILE")
OPTIONS = {"timm": {"img_size": int}, "openclip": {}}
#: safetensors metadata of a fine-tuned image encoder (as ``forgetbench run --save-weights`` writes it): its format,
#: and in "model" the model (name or spec) it was fine-tuned from
VISUAL_FORMAT = "forgetbench.visual/1"


@dataclass(frozen=True)
class ModelSpec:
    text: str
    family: str
    arch: str  # open_clip config name, timm model name, or the checkpoint path of a fine-tuned encoder
    weights: str | None = None  # pretrained tag, file path, "random"; None: timm's default pre-trained weights
    options: dict = field(default_factory=dict)

    @property
    def weights_kind(self) -> str:
        if self.weights == "random":
            return "random"
        if self.weights is None or (self.family == "openclip" and not _looks_like_file(self.weights)):
            return "pretrained"
        return "file"


def _looks_like_file(s: str) -> bool:
    return "/" in s or s.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt")) or s.startswith("~")


def parse_spec(text: str) -> ModelSpec:
    """Split a spec string into its parts; a malformed one is a SpecError that shows the accepted forms."""
    family, sep, rest = text.partition(":")
    if not sep or family not in FAMILIES or not rest:
        raise SpecError(f"model spec {text!r} is not of the form {SYNTAX}")
    if family == "finetuned":
        return ModelSpec(text, family, rest)
    rest, _, query = rest.partition("?")
    arch, at, weights = rest.partition("@")
    if not arch or (at and not weights):
        raise SpecError(f"model spec {text!r}: expected {family}:NAME@WEIGHTS ({SYNTAX})")
    options = parse_options(text, query, OPTIONS[family], family)
    if family == "timm" and weights and weights != "random" and not _looks_like_file(weights):
        raise SpecError(f"model spec {text!r}: after '@' timm takes a file or 'random'; a pretrained tag goes in the "
                        f"name (timm:{arch}.{weights})")
    if family == "openclip" and not at:
        raise SpecError(f"model spec {text!r}: open_clip models need their weights after '@': a pretrained tag "
                        f"(e.g. {arch}@openai), a file ({arch}@/path/weights.safetensors) or {arch}@random")
    return ModelSpec(text, family, arch, weights or None, options)


def check_spec(spec: ModelSpec) -> None:
    """The architecture (and tag) exist; nothing is loaded. Unknown names get did-you-mean suggestions."""
    if spec.family == "openclip":
        import open_clip

        _known(spec.arch, open_clip.list_models(), f"open_clip architecture in {spec.text!r}")
        if spec.weights_kind == "pretrained":
            tags = open_clip.list_pretrained_tags_by_model(spec.arch)
            _known(spec.weights, tags, f"pretrained tag of open_clip {spec.arch} in {spec.text!r}")
    elif spec.family == "timm":
        import timm

        base, _, tag = spec.arch.partition(".")
        _known(base, timm.list_models(), f"timm model in {spec.text!r}")
        if tag and spec.arch not in timm.list_pretrained(base + ".*"):
            raise UnknownNameError(f"unknown pretrained tag {tag!r} in {spec.text!r} (tags of {base}: "
                                   f"{', '.join(t.partition('.')[2] for t in timm.list_pretrained(base + '.*')) or 'none'})")


def _known(name: str, known: list[str], what: str) -> None:
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(f"unknown {what}: {name!r}{hint}")


def build_spec(spec: ModelSpec) -> Model:
    if spec.family == "openclip":
        from .openclip import build_openclip

        weights = spec.weights if spec.weights_kind != "file" else str(Path(spec.weights).expanduser())
        return build_openclip(spec.text, spec.arch, weights)
    if spec.family == "timm":
        from .timm_model import build_timm

        weights = spec.weights if spec.weights_kind != "file" else str(Path(spec.weights).expanduser())
        return build_timm(spec.text, spec.arch, weights, spec.options.get("img_size"))
    return load_finetuned(spec.arch, spec.text)


def resolve(text: str):
    """The registry's builder for a spec string: validated now, built (weights loaded) when called."""
    spec = parse_spec(text)
    if spec.family == "finetuned":
        path = Path(spec.arch).expanduser()
        if not path.is_file():
            raise WeightsError(f"fine-tuned checkpoint {path} not found (model spec {text!r})")
        MODELS.get(_base_of(path, text))  # the base model's name or spec is checked like any other
    else:
        check_spec(spec)
    return lambda: build_spec(spec)


# --------------------------------------------------------------------------------------------- fine-tuned encoders
def save_finetuned(visual, base_spec: str, path: Path | str) -> str:
    """Save a fine-tuned image encoder as safetensors that name their base model; returns the file's sha256.

    ``finetuned:PATH`` rebuilds the base model (its text tower, preprocessing) and puts these weights in its encoder.
    """
    from .weights_io import save_atomic

    if base_spec.startswith("finetuned:"):
        raise SpecError("a fine-tuned checkpoint must name a pre-trained base model, not another checkpoint")
    MODELS.get(base_spec)
    return save_atomic(visual.state_dict(), Path(path), metadata={"format": VISUAL_FORMAT, "model": base_spec})


def finetuned_base(path: Path) -> str:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise WeightsError(f"fine-tuned checkpoint {path} is not a readable safetensors file ({e})") from None
    base = meta.get("model") if meta.get("format") == VISUAL_FORMAT else None
    if not base:
        raise WeightsError(f"fine-tuned checkpoint {path} does not name its base model (metadata format "
                           f"{VISUAL_FORMAT!r} with a 'model' entry); "
                           f"save it with forgetbench.models.save_finetuned, or load a full model file with "
                           f"openclip:ARCH@FILE / timm:NAME@FILE")
    return base


def _base_of(path: Path, text: str) -> str:
    base = finetuned_base(path)
    if base.startswith("finetuned:"):
        raise WeightsError(f"fine-tuned checkpoint {path} names another checkpoint as its base ({base!r}); "
                           f"{text!r} needs a pre-trained base model")
    return base


def load_finetuned(path: Path | str, text: str) -> Model:
    from .weights_io import load_checked

    path = Path(path).expanduser()
    model = MODELS.get(_base_of(path, text))()
    state = load_checked(path, None)
    try:
        model.visual.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"fine-tuned checkpoint {path} does not fit its base model: "
                           f"{' '.join(str(e).split())[:300]}") from None
    model.name = text
    return model


MODELS.add_resolver(FAMILIES, resolve, SYNTAX)


# --------------------------------------------------------------------------------------------- dry runs, benchmarks
def _registered(text: str) -> tuple[object, dict]:
    """(registered builder, its options) of ``NAME`` or ``NAME?key=value``."""
    base, _, query = text.partition("?")
    builder = MODELS.get(base)
    return builder, parse_options(text, query, getattr(builder, "options", {}), base)


def weights_location(text: str) -> str:
    """Where the model's weights would be read from (no weights are loaded); a WeightsError when they are absent."""
    if ":" not in text or text.partition(":")[0] not in FAMILIES:
        builder, _ = _registered(text)
        if hasattr(builder, "weights_file"):  # weights shipped by an installed package
            return str(builder.weights_file())
        return "registered model (weights resolved by its builder)"
    spec = parse_spec(text)
    if spec.family == "finetuned":
        path = Path(spec.arch).expanduser()
        if not path.is_file():
            raise WeightsError(f"fine-tuned checkpoint {path} not found")
        return f"{path} (on {weights_location(_base_of(path, text))})"
    if spec.weights_kind == "random":
        return "random (seeded)"
    if spec.weights_kind == "file":
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found (model spec {text!r})")
        return str(path)
    if spec.family == "openclip":
        from .openclip import tag_weights_file

        return tag_weights_file(text, spec.arch, spec.weights)
    from .timm_model import pretrained_file

    return pretrained_file(spec.arch, text)


def random_variant(text: str) -> str:
    """The same architecture (and options) with seeded random weights; other registered names are returned unchanged."""
    if ":" not in text or text.partition(":")[0] not in FAMILIES:
        builder, options = _registered(text)
        return builder.random_spec(**options) if hasattr(builder, "random_spec") else text
    spec = parse_spec(text)
    if spec.family == "finetuned":
        return random_variant(_base_of(Path(spec.arch).expanduser(), text))
    query = "&".join(f"{k}={v}" for k, v in spec.options.items())
    return f"{spec.family}:{spec.arch}@random" + (f"?{query}" if query else "")
