"""A two-fidelity Li_x Mn_y Fe_(1-y) PO4 (LMFP) dataset labelled by pretrained CHGNet teachers.

No public DFT dataset of LiMnFePO4 exists, so this one is synthesised from two published models
that the ``chgnet`` package ships: ``high`` = CHGNet r2SCAN (energy, forces, stress, magmoms),
``low`` = CHGNet 0.3.0 (energy, forces, stress). How its frames are made (olivine cells with
random Li_x, Mn_y, strain, displacements or Langevin snapshots; shards; the split by whole groups;
the ``info`` keys) is in :mod:`mfwrap.datasets.lmfp_frames`; this module builds, stores, caches
and reads the files.

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
from pathlib import Path

import ase.io

from mfwrap.data.readers import LabelledStructure, read_dataset
from mfwrap.datasets.lmfp_frames import SIZES, SPLITS, TEACHERS, LMFPRecipe, build_shard, shard_sizes, split_frames
from mfwrap.files import default_cache_dir

LOG = logging.getLogger(__name__)
FORMAT_VERSION = 1
PREBUILT = Path(__file__).parent / "prebuilt"  # packaged copies of built variants (gzipped)


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
    if partial.exists() and (
        not (partial / "key.json").exists() or json.loads((partial / "key.json").read_text()) != key
    ):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "key.json").write_text(json.dumps(key))
    return partial


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


def build_lmfp(
    size: str | LMFPRecipe = "small",
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    workers: int = 1,
    threads: int = 1,
) -> Path:
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
            futures = [
                pool.submit(
                    _build_shard_file,
                    partial / f"{f}-{k}.pkl",
                    LOG.getEffectiveLevel(),
                    f,
                    k,
                    recipe,
                    seed,
                    device,
                    threads,
                )
                for f, k in todo
            ]
            for future in futures:
                future.result()
    else:
        for f, k in todo:
            _build_shard_file(partial / f"{f}-{k}.pkl", None, f, k, recipe, seed, device, threads)
    high, low = (
        [a for k in range(recipe.shards) for a in pickle.loads((partial / f"{f}-{k}.pkl").read_bytes())]
        for f in ("high", "low")
    )
    splits = split_frames(high, low, recipe, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for split, frames in splits.items():
            ase.io.write(staging / f"{split}.xyz", frames, format="extxyz")
        manifest = {
            "dataset": "lmfp",
            "format_version": FORMAT_VERSION,
            "size": name,
            "seed": seed,
            "recipe": dataclasses.asdict(recipe),
            "teachers": {f: f"chgnet {m}" for f, m in TEACHERS.items()},
            "units": {
                "energy": "eV (total)",
                "forces": "eV/Å",
                "stress": "eV/Å^3 (ASE units; GPa = this / ase.units.GPa)",
                "magmoms": "μB (high only)",
            },
            "files": {
                f"{split}.xyz": {"frames": len(frames), "sha256": _sha256(staging / f"{split}.xyz")}
                for split, frames in splits.items()
            },
            "build_seconds": round(time.perf_counter() - start, 1),
            "workers": workers,
            "device": device,
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


def read_lmfp(directory: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> dict[str, list[LabelledStructure]]:
    """Read a built dataset through :func:`mfwrap.data.readers.read_dataset` (standard ASE keys),
    after checking every file against the manifest's SHA-256; ``splits``: the files ``<split>.xyz``
    to read, each at the fidelity that starts its name ("high_test" → "high")."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    read = {}
    for split in splits:
        path = directory / f"{split}.xyz"
        if _sha256(path) != manifest["files"][path.name]["sha256"]:
            raise ValueError(f"{path} does not match its manifest (corrupt cache?); delete {directory} to rebuild")
        read[split] = read_dataset(path, fidelity=split.split("_")[0])
    return read


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
                raise ValueError(
                    f"packaged {source / name}.gz does not match its manifest (damaged installation?); "
                    f"reinstall mfwrap, or build with python -m mfwrap.datasets.lmfp --size {manifest['size']}"
                )
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


def load_lmfp(
    size: str | LMFPRecipe = "small",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    workers: int = 2,
) -> dict[str, list[LabelledStructure]]:
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
    parser = argparse.ArgumentParser(
        description="Build the two-fidelity LMFP dataset (CHGNet r2SCAN = high, 0.3.0 = low)."
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="variant to build (default: small)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory to create (default: the cache directory load_lmfp reads, see MFWRAP_CACHE)",
    )
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
