"""The README's method section says what the code does: its table of baselines is the generated one, and its hooks
and flags are the Method API's."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from forgetbench.methods import BASELINES, METHODS, Method
from forgetbench.report.methods_table import methods_markdown

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start:README.index("\n## ", start + 1)]


def test_the_baselines_table_is_the_generated_one():
    block = README[README.index("<!-- baselines-table:begin -->\n") + 31:README.index("<!-- baselines-table:end -->")]
    shipped = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith(f"{BASELINES}.")]  # not the tests'
    assert block == methods_markdown(shipped) + "\n", "regenerate it with `forgetbench ls methods --markdown`"


def test_the_hooks_and_flags_are_those_of_the_method_api():
    section = _section("Adding a method")
    documented = re.findall(r"^\| `(\w+)\(", section, flags=re.M)
    hooks = [name for name, fn in vars(Method).items()
             if inspect.isfunction(fn) and not name.startswith("_") and name != "check_params"]
    assert documented == hooks
    flags = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", section, flags=re.M)
    assert {name: default for name, default in flags} == {"trains_encoder": "True", "head_init": "None",
                                                          "strength": "None", "modes": "None"}
    assert {name for name, _ in flags} == {name for name, v in vars(Method).items()
                                           if isinstance(v, (bool, type(None))) and not name.startswith("_")}
    for signature in re.findall(r"^\| `(\w+\([^`]*\))`", section, flags=re.M):  # the arguments, too
        name, args = signature.split("(", 1)
        assert list(inspect.signature(getattr(Method, name)).parameters)[1:] == [a.strip() for a in args[:-1].split(",")]
