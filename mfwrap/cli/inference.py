"""``mfwrap evaluate`` and ``mfwrap predict``: a model file on structures, with the checks of
``--device``, ``--fidelity`` and the output files they share."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence


def _device(requested: str) -> str:
    """The torch device ``--device`` names ("auto": the GPU if torch sees one, else the CPU); an
    error naming it when it is not a device or not one this machine has."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(f"--device {requested}: torch sees no CUDA GPU on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {requested}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return str(device)


def _fidelity(model: Any, checkpoint: dict, requested: str | None) -> tuple[str | None, str, int]:
    """(name for mfwrap.predict, name for reports, index for graphs) of the requested fidelity.

    A multi-fidelity model needs ``requested`` when it has several fidelities; a single-fidelity
    model (backbone, Δ) was trained for one fidelity of its run, which is the default.
    """
    from mfwrap.fidelity import DEFAULT_FIDELITY, fidelity_names_of, is_multi_fidelity, resolve_fidelity

    multi = is_multi_fidelity(model)
    names = list(fidelity_names_of(model) if multi else checkpoint.get("fidelity_names") or [DEFAULT_FIDELITY])
    target = None if multi else checkpoint.get("target_fidelity") or names[-1]
    index = resolve_fidelity(names, requested, default=target, option="--fidelity")
    if not multi and names[index] != target:
        raise ValueError(
            f"this is a single-fidelity model of fidelity {target!r}; it does not predict {names[index]!r}"
        )
    return (requested if multi else None), names[index], index


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mfwrap.data.readers import DEFAULT_KEYS, LabelKeyError, read_dataset, to_graphs
    from mfwrap.model_file import read_model_file, warn_unseen_elements
    from mfwrap.train.config import TrainConfig
    from mfwrap.train.metrics import format_table
    from mfwrap.train.trainer import Trainer

    if args.json:
        _check_output("--json", args.json, [args.data, args.checkpoint], overwrite=True)
    device = _device(args.device)
    model, checkpoint = read_model_file(args.checkpoint)
    _, name, index = _fidelity(model, checkpoint, args.fidelity)
    names = list(checkpoint.get("fidelity_names") or ["default"])
    given = {target: getattr(args, f"{target}_key") for target in DEFAULT_KEYS}  # None where not given
    keys = {
        target: DEFAULT_KEYS[target] if key is None else None if key.lower() == "none" else key
        for target, key in given.items()
    }
    named = [target for target, key in given.items() if key is not None]  # must be in the file, unlike defaults
    if args.against is not None:
        if named:
            raise ValueError("--against takes the labels from the reference model: leave out the --*-key options")
        records = _reference_labels(args, name)
    elif args.data.startswith(DIVERSE):
        raise ValueError(f"{args.data}: the diverse set has no labels of its own; give --against REFERENCE_MODEL")
    else:
        try:
            records = read_dataset(args.data, name, keys, strict=named)
        except LabelKeyError as error:
            raise LabelKeyError(f"{error} (--energy-key, --forces-key, --stress-key, --magmoms-key)") from None
    graphs = to_graphs(records, model.graph_spec, {name: index})
    warn_unseen_elements(model, [g.atomic_numbers for g in graphs])
    targets = checkpoint.get("targets", "efsm")
    config = TrainConfig(
        targets=targets,
        eval_batch_size=args.batch_size,
        device=device,
        progress=False,
        output_dir=str(Path(args.checkpoint).parent),
    )
    metrics = Trainer(model, config, fidelity_names=names).evaluate(graphs)
    if not metrics.get(name):
        labelled = sorted({target for record in records for target in record.labels})
        raise ValueError(
            f"{args.data}: nothing to evaluate: its frames label {labelled}, which the model does not predict "
            f"(targets {targets!r}); name the keys of its labels with --energy-key, --forces-key, ..."
        )
    against = f", against the predictions of {args.against}" if args.against is not None else ""
    print(f"{len(graphs)} structures from {args.data} at fidelity {name!r}{against}:")
    print(format_table({Path(args.checkpoint).name: metrics}, name))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1))
    return 0


DIVERSE = "diverse:"  # evaluate's DATA word for the diverse set: diverse:N


def _reference_labels(args: argparse.Namespace, name: str) -> list:
    """The structures of ``args.data`` labelled by the reference model ``args.against`` at
    ``args.against_fidelity`` (its drift from the reference, e.g. a foundation model: forgetting), as
    records of fidelity ``name``. ``diverse:N``: N structures of AFLOW prototypes of the held-out part
    (:mod:`mfwrap.datasets.prototypes`, seed 0; never in a replay pool), decorated with the elements the
    reference knows and brought near its zero pressure."""
    import numpy as np

    from mfwrap.data.readers import read_structures
    from mfwrap.datasets.prototypes import DEFAULT_ELEMENTS, prototype_structures
    from mfwrap.model_file import read_model_file
    from mfwrap.predict import predict
    from mfwrap.replay import known_elements, pseudo_label

    reference = read_model_file(args.against)[0]
    fidelity = args.against_fidelity
    if not args.data.startswith(DIVERSE):
        return pseudo_label(reference, read_structures(args.data), fidelity=fidelity, name=name)
    count = args.data[len(DIVERSE) :]
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{args.data}: write the diverse set as diverse:N with N a positive number, e.g. diverse:100")
    known = known_elements(reference)
    elements = [z for z in DEFAULT_ELEMENTS if known is None or z in known]

    def pressure(frames: list) -> np.ndarray:
        return np.array([-np.trace(p["stress"]) / 3.0 for p in predict(reference, frames, fidelity, forces=False)])

    structures = prototype_structures(int(count), elements=elements, part="test", pressure=pressure)
    return pseudo_label(reference, structures, fidelity=fidelity, name=name)


def _check_output(option: str, output: str, inputs: Sequence[str], overwrite: bool) -> None:
    """Refuse an output file (given with ``option``) that is one of ``inputs`` (the same file, through
    links too), a directory, or an existing file without ``overwrite``."""
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"{option} {output}: is a directory; give a file name")
    if not path.exists():
        return
    for given in inputs:
        if os.path.exists(given) and os.path.samefile(path, given):
            raise ValueError(f"{option} {output}: is the input {given}; refused, as it would replace it")
    if not overwrite:
        raise ValueError(f"{option} {output}: exists; pass --overwrite to replace it, or choose another file")


def _prediction_keys(prefix: str) -> dict[str, str]:
    return {target: f"{prefix}{target}" for target in ("energy", "forces", "stress", "magmoms")}


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from ase.stress import full_3x3_to_voigt_6_stress

    from mfwrap.data.graph import EV_PER_A3_TO_GPA
    from mfwrap.data.readers import read_structures
    from mfwrap.model_file import read_model_file
    from mfwrap.predict import predict

    if args.output:
        _check_output("--output", args.output, [args.structures, args.checkpoint], args.overwrite)
    device = _device(args.device)
    model, checkpoint = read_model_file(args.checkpoint, map_location=device)
    frames = read_structures(args.structures)
    keys = _prediction_keys(args.prefix)
    for i, atoms in enumerate(frames if args.output else []):
        held = set(atoms.info) | set(atoms.arrays) | set(getattr(atoms.calc, "results", None) or {})
        if taken := sorted(held.intersection(keys.values())):
            raise ValueError(
                f"{args.structures}: frame {i} already has {taken}; choose another --prefix than {args.prefix!r}, "
                "so no key of the input is replaced"
            )
    fidelity, name, _ = _fidelity(model, checkpoint, args.fidelity)
    print(f"{len(frames)} structures from {args.structures}, predicted at fidelity {name!r}:")
    results = predict(model, frames, fidelity=fidelity, batch_size=args.batch_size)
    for atoms, result in zip(frames, results):  # beside the frame's own labels, which stay as they were
        atoms.info[keys["energy"]] = result["energy"]
        atoms.arrays[keys["forces"]] = result["forces"]
        stress = result.get("stress")
        if stress is not None and np.isfinite(stress).all():
            atoms.info[keys["stress"]] = full_3x3_to_voigt_6_stress(stress / EV_PER_A3_TO_GPA)
        if "magmoms" in result:
            atoms.arrays[keys["magmoms"]] = result["magmoms"]
    if args.output:
        _write_extxyz(args.output, frames)
    for i, (atoms, result) in enumerate(zip(frames, results)):
        print(
            f"{i:>5} {atoms.get_chemical_formula():<20} E = {result['energy']:.6f} eV "
            f"({result['energy'] / len(atoms):.6f} eV/atom)  max|F| = {np.abs(result['forces']).max():.4f} eV/Å"
        )
    return 0


def _write_extxyz(path: str, frames: list) -> None:
    """``frames`` as an extxyz file, written atomically (an interrupted write leaves no partial file)."""
    import io

    import ase.io

    from mfwrap.files import write_text

    text = io.StringIO()
    ase.io.write(text, frames, format="extxyz")
    write_text(path, text.getvalue())


def add_inference_parsers(commands: Any) -> None:
    """The ``evaluate`` and ``predict`` subcommands."""

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "checkpoint",
            help="an mfwrap model file: a checkpoint of mfwrap train (best.pt, last.pt) or MultiFidelity.save",
        )
        sub.add_argument("--fidelity", default=None, help="fidelity name; required for models with several fidelities")
        sub.add_argument("--batch-size", type=int, default=16, help="structures per forward pass (default 16)")
        sub.add_argument(
            "--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ... (default auto)"
        )

    evaluate = commands.add_parser("evaluate", help="MAE / RMSE of a checkpoint on labelled structures")
    common(evaluate)
    evaluate.add_argument(
        "data",
        help="labelled structures, any file ase.io.read reads (extxyz, ASE db, ...), or with --against also unlabelled "
        "ones, or diverse:N: N structures of held-out AFLOW prototypes of many chemistries",
    )
    evaluate.add_argument(
        "--against",
        default=None,
        metavar="REFERENCE",
        help="a model file whose predictions are the labels (e.g. the foundation model: how far the checkpoint "
        "has drifted from it, i.e. forgetting, with --fidelity the origin)",
    )
    evaluate.add_argument(
        "--against-fidelity", default=None, help="the fidelity of REFERENCE that labels (if it has several)"
    )
    for target in ("energy", "forces", "stress", "magmoms"):
        evaluate.add_argument(
            f"--{target}-key",
            default=None,
            help=f"info / arrays / calculator result key of the {target} label, which some frame must have; "
            f"'none': not evaluated (default: {target!r} where present)",
        )
    evaluate.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="energies, forces, stress, magmoms of structures")
    common(predict)
    predict.add_argument("structures", help="structures, any file ase.io.read reads")
    predict.add_argument(
        "--output",
        default=None,
        help="write the structures to this extxyz file with the predictions beside their own labels, under "
        "PREFIX + energy / forces / stress (ASE units, eV/Å^3 Voigt) / magmoms; never one of the inputs",
    )
    predict.add_argument("--prefix", default="mfwrap_", help="of the keys of the predictions (default mfwrap_)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    predict.set_defaults(func=cmd_predict)
