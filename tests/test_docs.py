"""The documentation cannot rot: the tutorials and the README's API lines run as written, and the site
builds without warnings.

Each page of ``docs/tutorials/`` runs in its own temporary working directory, its fenced blocks in
page order: ``python`` blocks in one namespace per page; a block with a ``title="FILE"`` attribute
(```` ```yaml title="run.yaml" ````) is written to FILE, as the reader would save it; every line of a
``shell`` block is an ``mfwrap`` command, run through :func:`mfwrap.cli.main`. A block preceded by
the line ``<!-- not run: REASON -->`` is not run; that is only for what cannot run on CI (a GPU, a
download), and the page's text tells the reader why, as the marker does.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
FENCE = re.compile(
    r'^```(?P<language>\w*)(?:[ \t]+title="(?P<title>[^"]+)")?[^\n]*\n(?P<code>.*?)^```[ \t]*$',
    re.MULTILINE | re.DOTALL,
)
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>.+?) -->\s*$")


@dataclass
class Block:
    language: str
    title: str | None
    code: str
    line: int
    not_run: str | None  # the page's reason, if the block is marked as not run


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, in order."""
    return blocks_of(page.read_text())


def blocks_of(text: str) -> list[Block]:
    """The fenced code blocks of a markdown ``text``, in order."""
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(before)
        found.append(
            Block(
                match["language"],
                match["title"],
                match["code"],
                text.count("\n", 0, match.start()) + 1,
                marker["reason"] if marker else None,
            )
        )
    return found


def run_shell(block: Block, where: str) -> None:
    from mfwrap.cli import main

    for command in block.code.splitlines():
        words = shlex.split(command, comments=True)
        if not words:
            continue
        assert words[0] == "mfwrap", f"{where}: shell lines in tutorials must be mfwrap commands, got {command!r}"
        status = main(words[1:])
        assert status == 0, f"{where}: {command!r} exited with status {status}"


@pytest.mark.parametrize("page", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace = {"__name__": f"tutorial_{page.stem.replace('-', '_')}"}
    for block in blocks(page):
        where = f"{page.relative_to(ROOT)}:{block.line}"
        if block.not_run:
            continue
        if block.title:
            Path(block.title).write_text(block.code)
        elif block.language == "python":
            exec(compile(block.code, where, "exec"), namespace)  # noqa: S102 - the tutorial's own code
        elif block.language == "shell":
            run_shell(block, where)


def test_the_readme_api_in_ten_lines_runs(tmp_path, monkeypatch):
    """README's "API in ten lines", with its placeholders (train_graphs, structures, atoms) bound to
    small labelled copper cells."""
    from ase.build import bulk

    from backbones.chgnet import CHGNet
    from mfwrap.data.graph import to_graph

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("[start:api]") : readme.index("[end:api]")]
    (code,) = [b.code for b in blocks_of(section) if b.language == "python"]
    structures = []
    for seed in range(3):
        cell = bulk("Cu", "fcc", a=3.6, cubic=True)
        cell.rattle(0.05, seed=seed)
        structures.append(cell)
    spec = CHGNet().graph_spec
    train_graphs = [
        to_graph(cell, spec, fidelity=f, labels={"energy": -3.7 * len(cell) - 0.1 * f})
        for cell in structures
        for f in (0, 1)
    ]
    monkeypatch.chdir(tmp_path)
    namespace = {"train_graphs": train_graphs, "structures": structures, "atoms": structures[0].copy()}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert len(namespace["pred"]) == len(structures) and (tmp_path / "mf.pt").is_file()
    assert namespace["atoms"].get_forces().shape == (4, 3)


def test_every_tutorial_block_is_run_or_says_why_not():
    """A page's blocks are python, shell, or files with a title; anything else would silently not run."""
    assert TUTORIALS, "no tutorial pages found"
    for page in TUTORIALS:
        for block in blocks(page):
            where = f"{page.relative_to(ROOT)}:{block.line}"
            runnable = block.language in ("python", "shell") or block.title is not None
            assert runnable or block.language == "text" or block.not_run, (
                f"{where}: a ```{block.language} block without title is neither run nor marked "
                "<!-- not run: REASON -->; use ```text for output shown to the reader"
            )


def test_the_block_reader_sees_titles_markers_and_order(tmp_path):
    page = (
        "intro\n```python\nx = 1\n```\n<!-- not run: needs a GPU -->\n```shell\nmfwrap x\n```\n"
        '```yaml title="run.yaml"\na: 1\n```\n'
    )
    path = tmp_path / "page.md"
    path.write_text(page)
    found = blocks(path)
    assert [(b.language, b.title, b.code, b.line, b.not_run) for b in found] == [
        ("python", None, "x = 1\n", 2, None),
        ("shell", None, "mfwrap x\n", 6, "needs a GPU"),
        ("yaml", "run.yaml", "a: 1\n", 9, None),
    ]


def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link, a missing page or a docstring mkdocstrings cannot
    read is an error."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "mfwrap" / "index.html").is_file()
