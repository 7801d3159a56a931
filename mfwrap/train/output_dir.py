"""A training run's output directory: what marks one as holding a run, and claiming it before training."""

from __future__ import annotations

from pathlib import Path

from mfwrap.files import cannot_write, check_writable

# The files a training run writes into its output_dir; a directory with any of them holds a run.
RUN_FILES = ("best.pt", "last.pt", "metrics.json", "metrics.csv")


def claim_output_dir(
    directory: str | Path, *, resume: bool = False, overwrite: bool = False, check_only: bool = False
) -> None:
    """Make ``directory`` ready for a training run, before any training.

    A directory holding a run (any of :data:`RUN_FILES`) is continued with ``resume``, or with
    ``overwrite`` rid of those files first (deleted; no other file in it is touched); with neither,
    ValueError naming both. Then the directory is created and proved writable
    (:func:`mfwrap.files.check_writable`): an unwritable place fails now, not after an epoch.
    ``check_only``: delete nothing yet (a check before reading the data, which may still fail).
    """
    if resume and overwrite:
        raise ValueError(f"{directory}: resume and overwrite exclude each other: continue the run or replace it")
    directory = Path(directory)
    try:
        present = [name for name in RUN_FILES if (directory / name).is_file()]
        if present and not (resume or overwrite):
            raise ValueError(
                f"{directory} holds a training run ({', '.join(present)}): continue it with --resume (resume=True), "
                "replace it with --overwrite (overwrite=True: deletes those files), or choose another output_dir"
            )
        for name in present if overwrite and not check_only else ():
            (directory / name).unlink(missing_ok=True)
    except OSError as error:
        raise cannot_write(directory, error) from error
    check_writable(directory)
