"""Baseline methods, one file each; every file registers its Method subclass with ``@register``.

This folder is installed as ``forgetbench.baselines``: import its modules under that name.
"""
