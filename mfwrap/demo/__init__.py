"""``make demo``: the main job in a few minutes on a CPU.

python -m mfwrap.demo [options]             # a foundation model gains a fidelity (mfwrap.demo.foundation)
python -m mfwrap.demo --scratch [options]   # MF against single-fidelity from scratch (mfwrap.demo.scratch)
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> dict:
    """Run the foundation demo, or with ``--scratch`` the from-scratch one; returns its summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--scratch" in argv:
        from mfwrap.demo import scratch

        return scratch.main([a for a in argv if a != "--scratch"])
    from mfwrap.demo import foundation

    return foundation.main(argv)
