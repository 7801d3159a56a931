"""``mfwrap export``: one fidelity of a model file as a plain model file, in mfwrap's format or a
format the backbone writes itself (e.g. ``chgnet``, which the official package loads)."""

from __future__ import annotations

import argparse
from typing import Any

from mfwrap.cli.inference import _check_output, _fidelity


def cmd_export(args: argparse.Namespace) -> int:
    from mfwrap.delta import DeltaModel
    from mfwrap.export import export_fidelity
    from mfwrap.fidelity import is_multi_fidelity
    from mfwrap.model_file import read_model_file, save_model

    _check_output("--output", args.output, [args.checkpoint], args.overwrite)
    model, checkpoint = read_model_file(args.checkpoint)
    _, name, _ = _fidelity(model, checkpoint, args.fidelity)
    if is_multi_fidelity(model) or isinstance(model, DeltaModel):
        exported = export_fidelity(model, name)  # the errors of models that cannot be exported
    else:
        exported = model.eval()  # a plain backbone (e.g. single-fidelity fine-tuning): written as it is
    formats = dict(getattr(exported, "export_formats", None) or {})
    if args.format == "mfwrap":
        extra = {"targets": checkpoint["targets"]} if "targets" in checkpoint else {}
        save_model(exported, args.output, fidelity_names=[name], target_fidelity=name, **extra)
    elif args.format in formats:
        getattr(exported, formats[args.format])(args.output)
    else:
        known = ", ".join(["mfwrap", *formats])
        raise ValueError(f"--format {args.format}: {type(exported).__name__} can be written as {known} only")
    print(f"exported fidelity {name!r} of {args.checkpoint} to {args.output} ({args.format} format)")
    return 0


def add_export_parser(commands: Any) -> None:
    """The ``export`` subcommand."""
    export = commands.add_parser(
        "export", help="one fidelity of a multi-fidelity model as a plain model file (mfwrap or the backbone's format)"
    )
    export.add_argument(
        "checkpoint", help="an mfwrap model file: a checkpoint of mfwrap train (best.pt, last.pt) or MultiFidelity.save"
    )
    export.add_argument(
        "--fidelity", default=None, help="the fidelity to export; required for models with several fidelities"
    )
    export.add_argument("--output", required=True, help="the file to write; never the checkpoint itself")
    export.add_argument(
        "--format",
        default="mfwrap",
        help="mfwrap (default: a file mfwrap.load, predict and evaluate read) or a format the backbone writes, "
        "e.g. chgnet (native CHGNet: a file chgnet.model.CHGNet.from_file loads), sevenn (SevenNet: a checkpoint "
        "SevenNetCalculator loads)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    export.set_defaults(func=cmd_export)
