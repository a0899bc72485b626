"""``python -m evsnn`` (and ``torchrun -m evsnn train ...``) runs the ``evsnn`` command."""

import sys

from .cli import main

sys.exit(main())
