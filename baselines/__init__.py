"""Baseline methods, one file each; every file registers its Method subclass with ``@register``."""
