"""``python -m forgetbench.cli ...`` (e.g. under ``torchrun``) is the ``forgetbench`` command."""
import sys

from . import main

sys.exit(main())
