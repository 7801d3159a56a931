"""Dependencies go one way: ``backbones`` may import ``mfwrap``, ``mfwrap`` never imports ``backbones``.

Every ``.py`` file under ``mfwrap/`` is parsed with :mod:`ast` (nothing is imported or run) and each
import is resolved to an absolute module name: ``import x``, ``from x import y`` (relative ones
resolved against the file's package), at any depth (inside functions, classes, ``if``/``try``), and
calls of ``importlib.import_module`` / ``import_module`` / ``__import__`` with a literal module name.
Class paths stored as data (``"backbones.chgnet:CHGNet"`` in configs and model files) are not imports
and are not checked: :func:`mfwrap.model_file.import_class` resolves them at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = "backbones"
IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _package_of(relative: Path) -> list[str]:
    """Package parts of the module in file ``relative`` (a path below the repository root)."""
    return list(relative.parts[:-1])


def _resolve(module: str | None, level: int, package: list[str]) -> str:
    """Absolute name of ``from <level dots><module> import ...`` in ``package``."""
    if level == 0:
        return module or ""
    base = package[: max(len(package) - (level - 1), 0)]
    return ".".join(base + ([module] if module else []))


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imported_modules(source: str, relative: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, the file ``relative`` to the root.

    For ``from package import name`` both ``package`` and ``package.name`` are listed (``name`` may
    be a submodule).
    """
    package = _package_of(relative)
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=str(relative))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
        elif isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            name = (
                _literal(node.args[0])
                if node.args
                else _literal(next((k.value for k in node.keywords if k.arg == "name"), None))
            )
            if called in IMPORT_FUNCTIONS and name is not None:
                anchor = _literal(next((k.value for k in node.keywords if k.arg == "package"), None))
                if called == "import_module" and len(node.args) > 1:
                    anchor = _literal(node.args[1])
                if name.startswith(".") and anchor is not None:
                    dots = len(name) - len(name.lstrip("."))
                    name = _resolve(name[dots:] or None, dots, anchor.split("."))
                found.append((node.lineno, name))
    return found


def forbidden_imports(source: str, relative: Path) -> list[str]:
    """ "file:line imports module" for each import of ``backbones`` (or a submodule) in ``source``."""
    first: dict[int, str] = {}  # one offence per line: its shortest forbidden name
    for line, name in imported_modules(source, relative):
        if (name == FORBIDDEN or name.startswith(FORBIDDEN + ".")) and len(name) < len(first.get(line, name + ".")):
            first[line] = name
    return [f"{relative}:{line} imports {name}" for line, name in sorted(first.items())]


def test_mfwrap_never_imports_backbones():
    files = sorted((ROOT / "mfwrap").rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} files under {ROOT / 'mfwrap'}"
    offences = [o for path in files for o in forbidden_imports(path.read_text(), path.relative_to(ROOT))]
    assert not offences, "mfwrap must not import backbones (move the code into mfwrap):\n" + "\n".join(offences)


@pytest.mark.parametrize(
    "source",
    [
        "import backbones",
        "import backbones.chgnet as chgnet",
        "import os, backbones.pyg",
        "from backbones import pyg",
        "from backbones.chgnet.model import CHGNet",
        "def build():\n    from backbones.sevenn import SevenNet\n    return SevenNet",
        "class A:\n    if True:\n        try:\n            import backbones.matgl\n"
        "        except ImportError:\n            pass",
        "from .. import backbones",
        "import importlib\nmodule = importlib.import_module('backbones.chgnet')",
        "from importlib import import_module\nimport_module(name='backbones')",
        "import importlib\nimportlib.import_module('.chgnet', 'backbones')",
        "import importlib\nimportlib.import_module('.pyg', package='backbones')",
        "__import__('backbones.pyg')",
    ],
)
def test_scanner_flags_every_form_of_import(source):
    offences = forbidden_imports(source, Path("mfwrap/example.py"))
    assert offences and all(o.startswith("mfwrap/example.py:") for o in offences), offences


def test_scanner_names_the_line():
    source = "import torch\n\n\ndef f():\n    import backbones.pyg\n"
    assert forbidden_imports(source, Path("mfwrap/sub/example.py")) == ["mfwrap/sub/example.py:5 imports backbones.pyg"]


@pytest.mark.parametrize(
    "source",
    [
        "import mfwrap.ops",
        "from mfwrap.ops import scatter_sum",
        "from . import backbone",
        "from .backbone import check_backbone",
        "BACKBONE = 'backbones.chgnet:CHGNet'",
        "import backbones_extra",
        "import importlib\nimportlib.import_module(path)",
    ],
)
def test_scanner_passes_what_is_not_an_import_of_backbones(source):
    assert forbidden_imports(source, Path("mfwrap/example.py")) == []
