"""The Triton cases of test_scatter_backends.py, on CPU under the Triton interpreter.

``TRITON_INTERPRET=1`` only takes effect if set before triton is first imported, and this process
has imported triton already (while collecting), so the cases run in a fresh Python: a pytest
subprocess with the variable set. Its failures are shown in full here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mfwrap.ops import set_backend
from mfwrap.ops.backend import is_available

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

if is_available("triton"):

    def test_triton_cases_pass_under_the_interpreter():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            str(HERE / "test_scatter_backends.py"),
            "-k",
            "triton and cpu",
        ]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        report = result.stdout[-8000:] + result.stderr[-2000:]
        assert result.returncode == 0, report
        passed = re.search(r"(\d+) passed", result.stdout)
        assert passed and int(passed.group(1)) >= 10, report
        assert "skipped" not in result.stdout, report

else:

    def test_triton_backend_missing_is_a_clear_error():
        with pytest.raises(ImportError, match="'triton' is not usable"):
            set_backend("triton")
