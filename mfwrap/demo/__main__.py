"""``python -m mfwrap.demo``: see :mod:`mfwrap.demo`."""

from mfwrap.demo import main

main()
