"""forgetbench: measure what a vision foundation model forgets when it is fine-tuned, and which methods prevent it."""
__version__ = "0.1.0"
