"""User-facing errors: each one becomes a single line on stderr and exit code 2 in the CLI."""


class ForgetbenchError(Exception):
    """Base class for errors caused by the user's input or environment (not bugs)."""

    exit_code = 2


class UnknownNameError(ForgetbenchError, KeyError):
    """A registry lookup failed; the message carries "did you mean" suggestions."""

    def __str__(self):  # KeyError would quote the message
        return self.args[0] if self.args else ""


class SpecError(ForgetbenchError, ValueError):
    """A task spec, method parameter or result file is malformed."""


class WeightsError(ForgetbenchError):
    """Weights are missing, refused (unsafe format) or fail their hash check."""


class DataError(ForgetbenchError):
    """A dataset or split is missing or unusable."""


class DivergenceError(ForgetbenchError):
    """Training produced a NaN or infinite loss."""


class ResourceError(ForgetbenchError):
    """The machine ran out of something a run needs: GPU memory (even at a micro-batch of 1), or disk space."""
