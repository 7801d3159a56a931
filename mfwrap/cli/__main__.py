"""``python -m mfwrap.cli`` (and ``torchrun ... -m mfwrap.cli train``): the ``mfwrap`` command."""

import sys

from mfwrap.cli import main

sys.exit(main())
