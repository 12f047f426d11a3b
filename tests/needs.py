"""Tests that need a system component (a Slurm cluster, a browser) skip without it, unless told it must be there.

CI lists what it installed in ``FORGETBENCH_TEST_REQUIRE`` (comma-separated: ``slurm``, ``browser``); for those a
missing component fails the test instead of skipping it, so a broken install cannot turn into a green run.
"""
from __future__ import annotations

import os

import pytest


def required(component: str) -> bool:
    return component in {c.strip() for c in os.environ.get("FORGETBENCH_TEST_REQUIRE", "").split(",")}


def missing(component: str, reason: str):
    """Skip (or fail, when CI requires ``component``) with ``reason``."""
    if required(component):
        pytest.fail(f"{reason} (FORGETBENCH_TEST_REQUIRE lists {component!r})", pytrace=False)
    pytest.skip(reason)
