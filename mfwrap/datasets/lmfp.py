"""A two-fidelity Li_x Mn_y Fe_(1-y) PO4 (LMFP) dataset labelled by pretrained CHGNet teachers.

No public DFT dataset of LiMnFePO4 exists, so this one is synthesised from two published models
that the ``chgnet`` package ships (they load offline; chgnet is imported only while building):

* ``high``: CHGNet r2SCAN (``CHGNet.load(model_name="r2scan")``) → energy, forces, stress, magmoms;
* ``low``: CHGNet 0.3.0 (GGA/GGA+U, MPtrj) → energy, forces, stress; magmoms absent (not zero).

Structures are olivine (Pnma) 1x1x2 supercells (56 atoms when fully lithiated) from
:func:`mfwrap.datasets.structures.lifepo4`. Each configuration draws its number of Li atoms
uniformly from 0..8 (Li_x, x = n_Li / 8, removed sites random) and its number of Mn atoms
uniformly from 0..8 (Mn_y Fe_(1-y), sites random), a symmetric strain ε with every component
uniform in ±``max_strain`` (lattice rows L → L (I + ε), fractional coordinates kept), then either

* ``static``: Gaussian displacements of every atom, σ uniform in ``displacement_a`` (Å); or
* ``md``: a short Langevin run (BAOAB, ``timestep_fs``, friction ``friction_per_fs``) at a
  temperature uniform in ``temperature_k``, driven by the *same* teacher that labels the frame,
  from small displacements and Maxwell-Boltzmann velocities; a snapshot every ``md_interval``
  steps, ``md_snapshots`` per trajectory.

Each fidelity is built in ``shards`` pieces (for parallel workers), each from its own random
stream (seed, fidelity, shard), so the two fidelities share no structure. The high-fidelity test
split holds whole groups (one static frame, or all snapshots of one trajectory), so no trajectory
is split between train and test.

Frames are stored as ``ase.Atoms`` with a ``SinglePointCalculator`` holding the labels in ASE units
(energy eV total, forces eV/Å, stress eV/Å^3 with the sign of chgnet's 's' and ASE, i.e.
``stress_GPa * ase.units.GPa``; magmoms μB, absent at ``low``) and ``info`` with ``fidelity``
("high" / "low"), ``kind``, ``group``, ``li_fraction``, ``mn_fraction``, ``strain`` (9 numbers,
row-major ε), and ``temperature_K`` / ``md_step`` (md) or ``displacement_A`` (static).

A built dataset is a directory of extxyz files (``high_train.xyz``, ``high_test.xyz``,
``low_train.xyz``) plus ``manifest.json`` (seed, recipe, sizes, package versions, SHA-256 of every
file and of the teacher checkpoints). :func:`load_lmfp` builds it once into the cache
(``cache_dir`` argument, else ``$MFWRAP_CACHE``, else ``~/.cache/mfwrap``) and reads it back
through :mod:`mfwrap.data.readers`, like any labelled extxyz file (stress converted to GPa).

The ``small`` set with seed 0 ships prebuilt with the package (``prebuilt/``: the three files
gzipped, and the build's manifest): :func:`load_lmfp` installs it into the cache instead of
labelling (minutes on a CPU), as long as its recipe equals ``SIZES["small"]``.
``python -m mfwrap.datasets.lmfp --size small --out DIR`` rebuilds it from the teachers, byte-identically
(checked: same .xyz SHA-256 with torch 2.13.0 CPU and chgnet 0.4.2; the manifest differs in build_seconds).

Command line: ``python -m mfwrap.datasets.lmfp --size full|small|tiny [--out DIR] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from mfwrap.data.readers import LabelledStructure, read_dataset
from mfwrap.datasets import teachers
from mfwrap.datasets.structures import lifepo4

LOG = logging.getLogger(__name__)
FORMAT_VERSION = 1
TEACHERS = {"high": "r2scan", "low": "0.3.0"}  # fidelity name -> chgnet pretrained model name
_LABEL_TASK = {"high": "efsm", "low": "efs"}  # chgnet tasks: energy, forces, stress (+ magmoms)
SPLITS = ("high_train", "high_test", "low_train")
PREBUILT = Path(__file__).parent / "prebuilt"  # packaged copies of built variants (gzipped)
_STREAM = {"high": 1, "low": 2, "split": 3}  # independent random streams per seed


@dataclass(frozen=True)
class LMFPRecipe:
    """How many frames of each kind, and how they are perturbed (lengths Å, times fs, K)."""

    n_high: int
    n_high_test: int
    n_low: int
    md_fraction: float = 0.5
    md_snapshots: int = 5
    md_interval: int = 4
    timestep_fs: float = 2.0
    friction_per_fs: float = 0.01
    temperature_k: tuple[float, float] = (300.0, 1000.0)
    max_strain: float = 0.03
    displacement_a: tuple[float, float] = (0.01, 0.06)
    md_start_displacement_a: float = 0.02
    batch_size: int = 1
    shards: int = 2


SIZES = {
    # the seed paper's sizes: 1,911 high (10 % test), 1,736 low
    "full": LMFPRecipe(n_high=1911, n_high_test=191, n_low=1736, shards=4),
    # the demo trains on the 100 high-fidelity training frames (+ all low) and tests on 50
    "small": LMFPRecipe(n_high=150, n_high_test=50, n_low=300, md_fraction=0.3, md_interval=3),
    # for unit tests: a few frames of every kind
    "tiny": LMFPRecipe(n_high=6, n_high_test=2, n_low=6, md_fraction=0.34, md_snapshots=2, md_interval=2, shards=1),
}


@functools.lru_cache(maxsize=1)
def _reference_cell() -> Atoms:
    """Fully lithiated LiFePO4 1x1x2 (56 atoms); callers copy it."""
    structure = lifepo4((1, 1, 2))
    return Atoms(numbers=[site.specie.Z for site in structure], positions=structure.cart_coords,
                 cell=structure.lattice.matrix, pbc=True)


def random_configuration(rng: np.random.Generator, recipe: LMFPRecipe, displacement: float) -> Atoms:
    """One Li_x Mn_y Fe_(1-y) PO4 cell: random Li vacancies, Mn/Fe mixing, strain, displacements σ (Å)."""
    atoms = _reference_cell().copy()
    lithium = np.flatnonzero(atoms.numbers == 3)
    metal = np.flatnonzero(atoms.numbers == 26)
    n_li, n_mn = rng.integers(0, len(lithium) + 1), rng.integers(0, len(metal) + 1)
    atoms.numbers[rng.choice(metal, n_mn, replace=False)] = 25
    del atoms[np.setdiff1d(lithium, rng.choice(lithium, n_li, replace=False))]
    strain = rng.uniform(-recipe.max_strain, recipe.max_strain, (3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.positions += rng.normal(0.0, displacement, atoms.positions.shape)
    atoms.info.update(li_fraction=n_li / len(lithium), mn_fraction=n_mn / len(metal), strain=strain.reshape(9))
    return atoms


def shard_sizes(n_frames: int, shards: int) -> list[int]:
    """Frames per shard: as equal as possible, the first ones one larger."""
    return [n_frames // shards + (k < n_frames % shards) for k in range(shards)]


def build_shard(fidelity: str, shard: int, recipe: LMFPRecipe, seed: int, device: str = "cpu",
                threads: int = 1) -> list[Atoms]:
    """Labelled frames of one shard of one fidelity (its own random stream), each with a ``group``
    id "<shard>-<i>" (one static frame, or all snapshots of one trajectory)."""
    n_frames = shard_sizes(recipe.n_high if fidelity == "high" else recipe.n_low, recipe.shards)[shard]
    with teachers.torch_threads(threads):
        return _build_shard(fidelity, shard, n_frames, recipe, seed, device)


def _build_shard(fidelity: str, shard: int, n_frames: int, recipe: LMFPRecipe, seed: int, device: str) -> list[Atoms]:
    rng = np.random.default_rng([seed, _STREAM[fidelity], shard])
    teacher = teachers.load_teacher(TEACHERS[fidelity], device, recipe.batch_size)
    n_traj = int(round(recipe.md_fraction * n_frames / recipe.md_snapshots))
    n_static = n_frames - n_traj * recipe.md_snapshots
    static = []
    for _ in range(n_static):
        sigma = rng.uniform(*recipe.displacement_a)
        static.append(random_configuration(rng, recipe, sigma))
        static[-1].info.update(kind="static", displacement_A=sigma)
    starts = [random_configuration(rng, recipe, recipe.md_start_displacement_a) for _ in range(n_traj)]
    temperatures = rng.uniform(*recipe.temperature_k, n_traj)
    frames: list[Atoms] = []
    for start in range(0, n_static, 100):  # chunks only to log progress
        chunk = static[start : start + 100]
        frames += map(teachers.store_prediction, chunk, teacher(chunk, _LABEL_TASK[fidelity]))
        LOG.info("%s shard %d: labelled %d / %d static frames", fidelity, shard, len(frames), n_static)
    LOG.info("%s shard %d: %d md trajectories x %d snapshots", fidelity, shard, n_traj, recipe.md_snapshots)
    trajectories = teachers.langevin_snapshots(
        teacher, starts, temperatures, rng, timestep_fs=recipe.timestep_fs, friction_per_fs=recipe.friction_per_fs,
        interval=recipe.md_interval, snapshots=recipe.md_snapshots, task=_LABEL_TASK[fidelity],
        log=lambda step, n: LOG.info("%s shard %d: md step %d / %d", fidelity, shard, step, n),
    ) if n_traj else []
    for group, members in enumerate([[a] for a in frames] + trajectories):
        for atoms in members:
            atoms.info.update(fidelity=fidelity, teacher=f"chgnet-{TEACHERS[fidelity]}", group=f"{shard}-{group}")
    return frames + [a for trajectory in trajectories for a in trajectory]


def _build_shard_file(path: Path, log_level: int | None, *args) -> None:
    """``build_shard(*args)`` pickled atomically to ``path``, so a finished shard survives an
    interrupted build; ``log_level`` set = running in a spawned worker, log like the parent."""
    if log_level is not None:
        logging.basicConfig(level=log_level, format="%(asctime)s %(message)s")
    frames = build_shard(*args)
    path.with_suffix(".tmp").write_bytes(pickle.dumps(frames))
    os.replace(path.with_suffix(".tmp"), path)


def _partial_dir(out: Path, key: dict) -> Path:
    """Where finished shards of the build of ``out`` wait; emptied if they were made for another ``key``."""
    partial, key = out.parent / f".{out.name}.partial", json.loads(json.dumps(key))  # tuples as JSON lists
    if partial.exists() and (not (partial / "key.json").exists() or json.loads((partial / "key.json").read_text()) != key):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "key.json").write_text(json.dumps(key))
    return partial


def split_high(frames: list[Atoms], n_test: int, rng: np.random.Generator) -> tuple[list[Atoms], list[Atoms]]:
    """(train, test) with exactly ``n_test`` test frames made of whole groups; both shuffled."""
    groups: dict[str, list[int]] = {}
    for index, atoms in enumerate(frames):
        groups.setdefault(str(atoms.info["group"]), []).append(index)
    test: list[int] = []
    for group in rng.permutation(sorted(groups)):
        if len(test) + len(groups[group]) <= n_test:
            test.extend(groups[group])
    if len(test) != n_test:
        raise ValueError(f"cannot hold out exactly {n_test} frames as whole groups")
    train = sorted(set(range(len(frames))) - set(test))
    return [frames[i] for i in rng.permutation(train)], [frames[i] for i in rng.permutation(test)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _provenance() -> dict:
    import chgnet  # only called while building

    from mfwrap import __version__

    versions = {name: importlib.metadata.version(name) for name in ("chgnet", "torch", "ase", "pymatgen", "numpy")}
    versions["mfwrap"] = __version__
    pretrained = Path(chgnet.__file__).parent / "pretrained"
    checkpoints = {
        fidelity: {path.name: _sha256(path) for path in sorted((pretrained / name).glob("*.pth.tar"))}
        for fidelity, name in TEACHERS.items()
    }
    return {"versions": versions, "teacher_checkpoints_sha256": checkpoints}


def _recipe(size: str | LMFPRecipe) -> tuple[str, LMFPRecipe]:
    if isinstance(size, LMFPRecipe):
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(size), sort_keys=True).encode()).hexdigest()[:10]
        return f"custom-{digest}", size
    if size not in SIZES:
        raise ValueError(f"unknown LMFP size {size!r}; choose one of {sorted(SIZES)} or pass an LMFPRecipe")
    return size, SIZES[size]


def build_lmfp(size: str | LMFPRecipe = "small", seed: int = 0, out_dir: str | os.PathLike | None = None,
               *, device: str = "cpu", workers: int = 1, threads: int = 1) -> Path:
    """Build the dataset into ``out_dir`` (created atomically; must not exist yet) and return it.

    Finished shards are kept next to ``out_dir`` until the build completes, so running the same
    build again after an interruption only labels the missing shards.

    The work is ``recipe.shards`` shards per fidelity; ``workers`` > 1 spawns that many processes
    (each with ``threads`` torch threads) to label shards in parallel. The result does not depend
    on ``workers`` or ``threads`` beyond floating-point reduction order.
    """
    name, recipe = _recipe(size)
    out = Path(out_dir) if out_dir is not None else dataset_dir(size, seed)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it to rebuild")
    start = time.perf_counter()
    partial = _partial_dir(out, {"recipe": dataclasses.asdict(recipe), "seed": seed, "format_version": FORMAT_VERSION})
    sizes = {"high": shard_sizes(recipe.n_high, recipe.shards), "low": shard_sizes(recipe.n_low, recipe.shards)}
    jobs = sorted(((f, k) for f in sizes for k in range(recipe.shards)), key=lambda job: -sizes[job[0]][job[1]])
    todo = [job for job in jobs if not (partial / f"{job[0]}-{job[1]}.pkl").exists()]
    LOG.info("%d of %d shards to build (%s)", len(todo), len(jobs), partial)
    if workers > 1 and len(todo) > 1:  # largest shards first, so the workers finish together
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
            futures = [pool.submit(_build_shard_file, partial / f"{f}-{k}.pkl", LOG.getEffectiveLevel(), f, k, recipe,
                                   seed, device, threads) for f, k in todo]
            for future in futures:
                future.result()
    else:
        for f, k in todo:
            _build_shard_file(partial / f"{f}-{k}.pkl", None, f, k, recipe, seed, device, threads)
    high, low = ([a for k in range(recipe.shards) for a in pickle.loads((partial / f"{f}-{k}.pkl").read_bytes())]
                 for f in ("high", "low"))
    split_rng = np.random.default_rng([seed, _STREAM["split"]])
    high_train, high_test = split_high(high, recipe.n_high_test, split_rng)
    low_train = [low[i] for i in split_rng.permutation(len(low))]
    splits = {"high_train": high_train, "high_test": high_test, "low_train": low_train}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for split, frames in splits.items():
            ase.io.write(staging / f"{split}.xyz", frames, format="extxyz")
        manifest = {
            "dataset": "lmfp", "format_version": FORMAT_VERSION, "size": name, "seed": seed,
            "recipe": dataclasses.asdict(recipe), "teachers": {f: f"chgnet {m}" for f, m in TEACHERS.items()},
            "units": {"energy": "eV (total)", "forces": "eV/Å", "stress": "eV/Å^3 (ASE units; GPa = this / ase.units.GPa)",
                      "magmoms": "μB (high only)"},
            "files": {f"{split}.xyz": {"frames": len(frames), "sha256": _sha256(staging / f"{split}.xyz")}
                      for split, frames in splits.items()},
            "build_seconds": round(time.perf_counter() - start, 1), "workers": workers, "device": device,
            **_provenance(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        try:
            os.replace(staging, out)
        except OSError as error:  # another process renamed the same build into place first
            raise FileExistsError(f"{out} exists; remove it to rebuild") from error
        shutil.rmtree(partial)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOG.info("built %s in %.0f s", out, time.perf_counter() - start)
    return out


def read_lmfp(directory: str | os.PathLike) -> dict[str, list[LabelledStructure]]:
    """Read a built dataset through :func:`mfwrap.data.readers.read_dataset` (standard ASE keys),
    after checking every file against the manifest's SHA-256."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    splits = {}
    for split in SPLITS:
        path = directory / f"{split}.xyz"
        if _sha256(path) != manifest["files"][path.name]["sha256"]:
            raise ValueError(f"{path} does not match its manifest (corrupt cache?); delete {directory} to rebuild")
        splits[split] = read_dataset(path, fidelity=split.split("_")[0])
    return splits


def default_cache_dir() -> Path:
    """``$MFWRAP_CACHE`` if set, else ``~/.cache/mfwrap``."""
    return Path(os.environ.get("MFWRAP_CACHE") or Path.home() / ".cache" / "mfwrap")


def dataset_dir(size: str | LMFPRecipe = "small", seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`load_lmfp` keeps this variant."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "lmfp" / f"v{FORMAT_VERSION}-{_recipe(size)[0]}-seed{seed}"


def prebuilt_dir(size: str | LMFPRecipe = "small", seed: int = 0) -> Path:
    """Where a packaged copy of this variant would be (it exists for ``small``, seed 0)."""
    return PREBUILT / f"lmfp-v{FORMAT_VERSION}-{_recipe(size)[0]}-seed{seed}"


def install_prebuilt(size: str | LMFPRecipe, seed: int, directory: Path) -> bool:
    """Install the packaged copy of (size, seed) into ``directory`` (atomically); False if there is
    none, or if it was built with another recipe or format than ``SIZES[size]`` / ``FORMAT_VERSION``.

    The packaged files are gzipped extxyz; each decompressed file must match the SHA-256 in the
    packaged manifest (else ValueError naming the file, and nothing is installed).
    """
    source = prebuilt_dir(size, seed)
    if not (source / "manifest.json").exists():
        return False
    manifest = json.loads((source / "manifest.json").read_text())
    recipe = json.loads(json.dumps(dataclasses.asdict(_recipe(size)[1])))
    if (manifest["recipe"], manifest["seed"], manifest["format_version"]) != (recipe, seed, FORMAT_VERSION):
        LOG.warning("packaged LMFP copy %s was made with another recipe; building instead", source)
        return False
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        for name, entry in manifest["files"].items():
            data = gzip.decompress((source / f"{name}.gz").read_bytes())
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError(f"packaged {source / name}.gz does not match its manifest (damaged installation?); "
                                 f"reinstall mfwrap, or build with python -m mfwrap.datasets.lmfp --size {manifest['size']}")
            (staging / name).write_bytes(data)
        shutil.copyfile(source / "manifest.json", staging / "manifest.json")
        try:
            os.replace(staging, directory)
        except OSError:  # another process installed or built it first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOG.info("LMFP %s (seed %d): installed the packaged copy into %s (no labelling)", manifest["size"], seed, directory)
    return True


def load_lmfp(size: str | LMFPRecipe = "small", seed: int = 0, cache_dir: str | os.PathLike | None = None,
              *, device: str = "cpu", workers: int = 2) -> dict[str, list[LabelledStructure]]:
    """The LMFP splits ``{"high_train", "high_test", "low_train"}``, built on first use, then cached.

    Each split is a list of :class:`~mfwrap.data.readers.LabelledStructure` (fidelity "high" or
    "low", labels in mfwrap units: stress in GPa; no magmoms at "low"), ready for
    :func:`mfwrap.data.readers.to_graphs`; ``record.atoms.info`` keeps the provenance keys.

    Args:
        size: "full" (1,911 high of which 191 test, 1,736 low), "small" (150 high of which 50
            test, 300 low; packaged for seed 0, see :func:`install_prebuilt`), "tiny" (tests),
            or an :class:`LMFPRecipe`.
        seed: everything (compositions, strains, displacements, MD noise, split) follows from it.
        cache_dir: cache root; default ``$MFWRAP_CACHE`` or ``~/.cache/mfwrap``.
        device, workers: for a build only (see :func:`build_lmfp`).
    """
    directory = dataset_dir(size, seed, cache_dir)
    if not (directory / "manifest.json").exists() and not install_prebuilt(size, seed, directory):
        try:
            build_lmfp(size, seed, directory, device=device, workers=workers)
        except FileExistsError:  # another process finished the same build first
            pass
    built_with = json.loads((directory / "manifest.json").read_text())["recipe"]
    if built_with != json.loads(json.dumps(dataclasses.asdict(_recipe(size)[1]))):
        raise ValueError(f"{directory} was built with a different recipe ({built_with}); delete it to rebuild")
    return read_lmfp(directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the two-fidelity LMFP dataset (CHGNet r2SCAN = high, 0.3.0 = low).")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="variant to build (default: small)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory to create (default: the cache directory load_lmfp reads, see MFWRAP_CACHE)")
    parser.add_argument("--device", default="cpu", help="torch device of the teachers (default: cpu)")
    parser.add_argument("--workers", type=int, default=2, help="processes labelling shards in parallel (default: 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out if args.out is not None else dataset_dir(args.size, args.seed)
    if not (out / "manifest.json").exists():
        build_lmfp(args.size, args.seed, out, device=args.device, workers=args.workers)
    manifest = json.loads((out / "manifest.json").read_text())
    counts = ", ".join(f"{name}: {entry['frames']}" for name, entry in manifest["files"].items())
    print(f"{out}\n  {counts}\n  built in {manifest['build_seconds']} s")


if __name__ == "__main__":
    main()
