"""The ledger's entries: a paper figure or table, the tasks that reproduce it, and how close counts as reproduced.

A paper entry's published numbers live in its task files (``targets:``). A mini entry runs the mini world's analogue
of a paper entry on a CPU and is compared with that paper entry's targets: its measurement is an analogue, never a
reproduction, so its numbers are shown beside the paper's but not judged against them (only stated directions are).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnknownNameError
from ..schema import hint

E2E = ("stanford-cars", "cifar10", "cifar100", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn")
MINI_FINETUNE = ("mini-shapes", "mini-counts", "mini-digits")


@dataclass(frozen=True)
class Entry:
    """``tasks``: the task set ``forgetbench reproduce`` runs; ``tolerance``: points either side of the measured
    mean (widened by its interval) within which a published value counts as reproduced; ``figure``: a plot kind
    drawn from the entry's records; ``analogue_of``: the paper entry whose targets a mini entry is shown against."""

    name: str
    title: str
    tasks: tuple[str, ...]
    tolerance: float | None = None
    figure: str | None = None
    analogue_of: str | None = None
    notes: str = ""

    @property
    def is_mini(self) -> bool:
        return self.analogue_of is not None

    def tolerance_rule(self) -> str:
        """The rule the ledger's verdict column applies, in words."""
        claims = ("a stated direction (> 0, < 0) holds when the measured mean has that sign, and is significant "
                  "when the whole 95% interval does")
        if self.is_mini:
            return (f"mini-world analogue of `{self.analogue_of}`: published values are the paper's and are not "
                    f"compared (a different model and data); {claims}")
        if self.tolerance is None:
            return f"no published values (none were found), only stated directions: {claims}"
        return (f"within tolerance when |measured mean − published| ≤ {self.tolerance:g} points + the half-width of "
                f"the measured 95% interval; {claims}")


ENTRIES = (
    Entry("proxy-fda-table1", "Proxy-FDA (ICML 2025), Table 1: end-to-end fine-tuning of CLIP ViT-B/32, mean over ten "
          "datasets", tuple(f"e2e-clip-vitb32-{d}" for d in E2E), tolerance=1.0),
    Entry("proxy-fda-dinov2", "Proxy-FDA (ICML 2025), text: transfer stays positive with a DINOv2 ViT-B/14 backbone",
          tuple(f"e2e-dinov2-vitb14-{d}" for d in E2E)),
    Entry("proxy-fda-fig3", "Proxy-FDA (ICML 2025), Fig. 3: forgetting follows OTDD more closely than L2 drift",
          tuple(f"fig3-clip-vitb32-{d}" for d in E2E), figure="correlation"),
    Entry("mtil-order1", "ZSCL (ICCV 2023), Table 3: MTIL Order I, CLIP ViT-B/16, Transfer / Avg / Last",
          ("mtil-order1",), tolerance=2.0, figure="sequence"),
    Entry("mtil-order2", "ZSCL (ICCV 2023), Table 10: MTIL Order II, CLIP ViT-B/16, Transfer / Avg / Last",
          ("mtil-order2",), tolerance=2.0, figure="sequence"),
    Entry("calibrated-office-home", "Fine-Tuning is Fine, if Calibrated (NeurIPS 2024): absent classes on "
          "Office-Home, 30 seen / 35 absent", tuple(f"calibrated-office-home-{d}" for d in
                                                   ("art", "clipart", "product", "real-world")),
          figure="absent"),
    Entry("mini-table1", "mini world: fine-tune targets, mean over mini-shapes, mini-counts, mini-digits",
          MINI_FINETUNE, analogue_of="proxy-fda-table1"),
    Entry("mini-fig3", "mini world: forgetting against OTDD and L2 drift, pooled over the mini fine-tune targets",
          MINI_FINETUNE, figure="correlation", analogue_of="proxy-fda-fig3"),
    Entry("mini-mtil", "mini world: four concepts in a row (mini-sequence)", ("mini-sequence",), figure="sequence",
          analogue_of="mtil-order1"),
    Entry("mini-calibrated", "mini world: absent classes (mini-absent, 4 seen / 4 absent shapes)", ("mini-absent",),
          figure="absent", analogue_of="calibrated-office-home"),
)


def entry(name: str) -> Entry:
    """The entry called ``name``; an UnknownNameError listing the entries otherwise."""
    for e in ENTRIES:
        if e.name == name:
            return e
    names = [e.name for e in ENTRIES]
    raise UnknownNameError(f"no reproduction entry {name!r}{hint(name, names)}; entries: {', '.join(names)} "
                           f"(forgetbench reproduce --list)")
