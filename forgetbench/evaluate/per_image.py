"""Per-image correctness of a classifier on a test split, packed for a record: what a bootstrap over test images needs.

An accuracy is a mean over a fixed set of test images; its uncertainty, and the paired difference between a fine-tuned
model and the pre-trained one on the same images, can only be resampled from which images each got right. A record
keeps that as one string per classifier, ``"<n>:<base64>"``: ``n`` test images, then ``numpy.packbits`` of the
correct/wrong vector (the first image in the high bit of the first byte; the pad bits of the last byte are 0). 1,000
images take 172 characters. The ``n:`` prefix keeps the string from ever reading as bare base64 (the submission check
looks inside such strings for pickles). A record's block of these strings must agree with the accuracies next to them:
the same ``n``, and each accuracy equal to 100 x (correct images) / n.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Mapping

import numpy as np

from ..schema import Check, Problems, join, show

_FORMAT = re.compile(r"(\d+):([A-Za-z0-9+/]*={0,2})")


def pack(correct: np.ndarray) -> str:
    """``"<n>:<base64 of packbits>"`` of a boolean vector (one entry per test image, in the split's order)."""
    correct = np.asarray(correct, dtype=bool).ravel()
    return f"{correct.size}:{base64.b64encode(np.packbits(correct).tobytes()).decode('ascii')}"


def unpack(text: str) -> np.ndarray:
    """The boolean vector of a string ``pack`` wrote (ValueError if it is not one)."""
    m = _FORMAT.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"expected '<n>:<base64>', got {show(text)}")
    n = int(m[1])
    try:
        raw = base64.b64decode(m[2], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"invalid base64 ({e})") from None
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"{len(raw)} bytes hold {8 * len(raw)} bits, but n = {n} needs {(n + 7) // 8} bytes")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    if bits[n:].any():
        raise ValueError("the pad bits after the n-th image are not 0")
    return bits[:n].astype(bool)


def accuracy(text: str) -> float:
    """Percent of the images marked correct (the accuracy the vector reproduces)."""
    correct = unpack(text)
    return 100.0 * float(correct.mean()) if correct.size else 0.0


class PerImage(Check):
    """A packed correctness vector (``pack``), kept as the string it is in the record."""

    what = "per-image correctness '<n>:<base64 of numpy.packbits>'"

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        try:
            if unpack(v).size == 0:
                raise ValueError("n = 0: no test image")
        except ValueError as e:
            return problems.add(path, f"expected {self.what}: {e}")
        return v


def block_problems(correct: Mapping[str, str], values: Mapping[str, float | None], path: str,
                   problems: Problems) -> None:
    """A block of vectors (``correct``: name -> packed vector) against the accuracies of its section (``values``:
    name -> percent): every vector covers the same test images, and a vector named like an accuracy reproduces it."""
    from .heldout import CONSISTENCY_TOL  # heldout imports this module

    sizes = {name: unpack(text).size for name, text in correct.items()}
    if len(set(sizes.values())) > 1:
        problems.add(path, "the vectors cover different numbers of test images ("
                     + ", ".join(f"{k}: {n}" for k, n in sizes.items()) + "); they must all be of the test split")
    for name, text in correct.items():
        expected = values.get(name)
        if expected is None:
            continue
        got = accuracy(text)
        if abs(got - expected) > CONSISTENCY_TOL:
            problems.add(join(path, name), f"marks {got!r}% of the images correct but {name} is {expected!r} "
                                           f"(tolerance {CONSISTENCY_TOL})")
