"""``benchmarks/README.md``: every benchmark result in one document, generated from the result files.

:func:`write_results_document` reads ``results_dir`` (``benchmarks/results``) and writes ``out``:

* the methods, from the template ``methods.md`` (prose; the levels table comes from
  :data:`mfwrap.bench.grid.LEVELS`);
* the suite at :data:`SUITE_LEVEL` (each level's reports have their own folder, ``suite/<level>/``):
  ``suite/medium/claims.md`` verbatim, then each ``suite/medium/<experiment>.md`` with its plot, then
  the foundation experiment's ``suite/foundation.md`` and plot (``mfwrap bench foundation``);
* every other benchmark, one renderer per result file (:data:`RENDERERS`), printing the figures with
  the machine, date and notes the file records; a ``*.json`` without a renderer is an error;
* the interpretation, from the template ``discussion.md``.

Templates name figures as ``{{name}}``; :func:`figures` computes each from a result file, so no number
in the document is typed by hand. A name with no figure is an error that names it.

``python -m mfwrap.bench.document [--results DIR] [--out FILE] [--check]``; ``--check`` writes nothing
and exits 1 if ``out`` differs from what would be generated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Callable

from mfwrap.bench.backbones import BACKBONES
from mfwrap.bench.grid import EXPERIMENTS, LEVELS
from mfwrap.files import write_text

SUITE_LEVEL = "medium"  # the level whose suite reports (results/suite/<level>/) the document shows
TEMPLATES = ("methods.md", "discussion.md")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
TARGETS = ("energy", "forces", "stress", "magmoms")


def num(x: float, sig: int = 3) -> str:
    """``x`` with ``sig`` significant digits; from 10**(sig - 1) on as a whole number (thousands
    separated), below 1e-3 in exponent form."""
    if x == 0:
        return "0"
    if abs(x) >= 10 ** (sig - 1):
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.1e}"
    return f"{x:#.{sig}g}".rstrip(".")


def pct(x: float) -> str:
    """A fraction as a signed percentage (0.013 → "+1.3 %")."""
    return f"{100 * x:+.1f} %"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pairs(mapping: dict) -> str:
    """``{"a": 1, "b": 2e-5}`` as "a 1, b 2.0e-05"."""
    return ", ".join(f"{k} {num(v) if isinstance(v, float) else v}" for k, v in mapping.items())


def provenance(data: dict) -> str:
    """One line with what a result file records about where and when it was measured."""
    parts = []
    for key in ("date", "model_measured", "device", "machine", "torch", "threads", "cpu_count", "cores"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            value = pairs({k: v for k, v in value.items() if not isinstance(v, (list, dict))})
        if value != "":
            parts.append(f"{key}: {value}")
    if not any(k in data for k in ("date", "model_measured")):
        parts.append("date: not recorded in the file")
    note = f" Note recorded with it: {data['note'].rstrip('.')}." if "note" in data else ""
    return "*" + "; ".join(parts) + ".*" + note


# --- one renderer per benchmark: (the loaded JSON) -> markdown ------------------------------------------------


def _speed_chgnet(d: dict) -> str:
    out = [
        f"{d['structure']}. Targets: E+F+S+M {d['targets']['efsm_speedup']}×, graphs "
        f"{d['targets']['graph_speedup']}×. Wall-clock medians; × = official / native."
    ]
    for section, what in (
        ("model", "model only, eager (E and E+F under no_grad)"),
        ("end_to_end", "end to end, graphs included"),
        ("compiled", "mfwrap.compile_model"),
        ("graph", "graph construction"),
    ):
        rows = [
            [case, num(r["native_ms"]), num(r["official_ms"]), num(r["speedup"]) + "×"]
            + (
                [
                    num(r["max_difference_from_official"]["forces_eV_per_A"]),
                    num(r["eager_max_difference_from_official"]["forces_eV_per_A"]),
                ]
                if section == "compiled"
                else []
            )
            for case, r in d[section].items()
        ]
        extra = ["max ΔF from official, compiled (eV/Å)", "eager (eV/Å)"] if section == "compiled" else []
        out += [
            f"\n{what} (workload/targets/threads):\n",
            table(["case", "native ms", "official ms", "×"] + extra, rows),
        ]
    f = d["flops"]
    flops = {side: num(n / 1e9) for side, n in f["efsm_matmul_flops"].items()}
    out.append(
        f"\nMatmul FLOPs per E+F+S+M ({f['graph_sizes']['atoms']} atoms): native {flops['native']} G, official "
        f"{flops['official']} G; native runs at {num(f['native_gflops_1t'])} GFLOP/s on one thread (sgemm "
        f"{num(f['sgemm_gflops_1t'])})."
    )
    rows = []
    for s in d["scaling"]:
        n, o = s["native"], s["official"]
        official = (
            o["skipped"]
            if "skipped" in o
            else f"{num(o['ms'])} ms, {num(o['peak_MiB_above_baseline'] / o['atoms'])} MiB/atom"
        )
        rows.append(
            [
                s["cell"],
                s["atoms"],
                num(n["ms"]),
                num(n["ms"] / n["atoms"]),
                num(n["peak_MiB_above_baseline"] / n["atoms"]),
                official,
            ]
        )
    out += [
        "\nScaling, E+F+S+M, one thread:\n",
        table(["cell", "atoms", "native ms", "ms/atom", "peak MiB/atom", "official"], rows),
    ]
    return "\n".join(out)


def _compile_chgnet(d: dict) -> str:
    rows = [
        [
            name,
            num(w["eager_median_s"]),
            num(w["compiled_median_s"]),
            num(w["speedup"]) + "×",
            num(w["compile_s"]),
            pairs(w["max_difference"]),
        ]
        for name, w in d["workloads"].items()
    ]
    return (
        f"{d['model']}, {d['structure']}; {d['backend']}, fullgraph {d['fullgraph']}, medians of {d['reps']}.\n\n"
        + table(["workload", "eager s", "compiled s", "×", "compile s", "max difference compiled vs eager"], rows)
    )


def _overhead_mf(d: dict) -> str:
    rows = [
        [
            case,
            r["atoms"],
            num(r["bare_ms"]),
            num(r["wrapped_ms"]),
            pct(r["overhead"]),
            pct(r["overhead_of_minima"]),
            pct(r["control_bare_vs_bare"]),
        ]
        for case, r in d["results"].items()
    ]
    return (
        f"{d['what']}. {d['statistic']}; target {pct(d['target_overhead'])} on {', '.join(d['target_cases'])}: "
        f"{'met' if d['meets_target'] else 'not met'}.\n\n"
        + table(["case", "atoms", "bare ms", "wrapped ms", "overhead", "of minima", "control (bare vs bare)"], rows)
    )


def _train_step(d: dict) -> str:
    blocks = d["blocks"]
    header = ["seconds per step (× official), peak MiB/atom"] + [
        f"{b['threads']} thread{'s' * (b['threads'] > 1)}, batch {b['batch_size']}" for b in blocks
    ]

    def cell(r: dict) -> str:
        return f"{num(r['median_s_per_step'])} ({num(r['speedup_vs_official'], 2)}×), {num(r['peak_mib_per_atom'])}"

    rows = [[name] + [cell(b["rows"][name]) for b in blocks] for name in blocks[0]["rows"]]
    out = [d["what"].replace("\n", " ") + f" Medians of {d['steps']} steps.\n", table(header, rows)]
    for batch, r in d.get("ddp", {}).items():
        out.append(
            f"\nDDP, 2 gloo processes, batch {batch}: {num(r['median_s_per_step'])} s per step, "
            f"{num(r['speedup_vs_1_process_2_threads'])}× one process with 2 threads."
        )
    return "\n".join(out)


def _train_step_scaling(d: dict) -> str:
    rows = [
        [r["atoms"], num(r["seconds"]), num(r["ms_per_atom"]), num(r["peak_mib"]), num(r["mib_per_atom"])]
        for r in d["rows"]
    ]
    return d["what"] + ".\n\n" + table(["atoms", "s per step", "ms/atom", "peak MiB", "MiB/atom"], rows)


def _fidelity_term(d: dict) -> str:
    rows = [
        [threads, variant, num(r["median_s_per_step"]), pct(r["overhead_vs_bare"])]
        for threads, variants in d["threads"].items()
        for variant, r in variants.items()
    ]
    return (
        f"Compiled training step, batch {d['batch_size']}, mixed fidelities, medians of {d['steps']} interleaved "
        "steps; how the wrapper adds each row's fidelity column W_F[:, f].\n\n"
        + table(["threads", "variant", "s per step", "over bare CHGNet"], rows)
    )


def _fidelity_gap(d: dict) -> str:
    rows = [
        [group, key.replace("_", " "), num(value)]
        for group in ("energy_meV_per_atom", "forces_meV_per_A", "stress_GPa")
        for key, value in d[group].items()
    ]
    return (
        f"{d['dataset']}; low teacher {d['low_teacher']}, high teacher {d['high_teacher']}: the low teacher as a "
        "predictor of the high-fidelity labels.\n\n" + table(["quantity", "comparison", "value"], rows)
    )


def _head_to_head(d: dict) -> str:
    results = d["results"]
    errors = [k for k in next(iter(results.values())) if k.startswith(("energy", "forces", "stress"))]
    header = ["model"] + [k.replace("_", " ") for k in errors] + ["steps", "parameters", "s per step", "minutes"]
    rows = [
        [name]
        + [num(r[k]) for k in errors]
        + [r["steps"], f"{r['parameters']:,}", num(r["seconds_per_step"]), num(r["total_seconds"] / 60)]
        for name, r in results.items()
    ]
    protocol = f" {d['protocol']}." if "protocol" in d else ""
    return f"{d['data']}.{protocol} High-fidelity test errors (meV/atom, meV/Å, GPa).\n\n" + table(header, rows)


def _lmfp_full(d: dict) -> str:
    out = [d["what"]]
    for run in d["runs"]:
        models = list(run["test_mae_rmse"])
        rows = [
            [f"{t} ({d['units'][t]})"]
            + [f"{num(run['test_mae_rmse'][m][t]['mae'])} ({num(run['test_mae_rmse'][m][t]['rmse'])})" for m in models]
            for t in TARGETS
        ]
        minutes = ", ".join(f"{m} {num(s / 60)} min" for m, s in run["train_seconds"].items())
        out += [
            f"\n`{run['command']}`: multi-fidelity {run['multi_fidelity']}; single-fidelity "
            f"{run['single_fidelity']}; training {minutes}.\n",
            table(["high-fidelity test MAE (RMSE)"] + models, rows),
        ]
    return "\n".join(out)


def _speed_gpu(d: dict) -> str:
    s, t = d["scatter"], d["targets"]
    rows = [
        [
            backend,
            op,
            num(r["ms"]),
            num(r["GB/s"]),
            f"{100 * r['fraction_of_copy_bandwidth']:.0f} %",
            num(r["speedup_vs_index_add_"]) + "×",
        ]
        for backend, ops in s["backends"].items()
        for op, r in ops.items()
    ]
    out = [
        f"torch {d['torch']}. Scatter sum alone on {s['device']}: {pairs(s['problem'])}; copy bandwidth "
        f"{num(s['copy_bandwidth_GBs'])} GB/s. Targets: {100 * t['scatter_fraction_of_copy_bandwidth']:.0f} % of "
        f"copy bandwidth, {t['scatter_speedup_vs_index_add']}× index_add_.\n",
        table(["backend", "op", "ms", "GB/s", "of copy", "× index_add_"], rows),
    ]
    e = d["end_to_end"]
    rows = []
    for case, c in e["cases"].items():
        o = c["official"]
        rows.append(
            [
                case,
                "official",
                num(o["inference_ms"]),
                "",
                num(o["train_step_ms"]),
                "",
                f"{num(o['inference_peak_MB'] / 1024)} / {num(o['train_peak_MB'] / 1024)}",
                "",
            ]
        )
        for backend, r in c["native"].items():
            if "error" in r:
                rows.append([case, backend, "failed: " + r["error"].split("(")[0], "", "", "", "", ""])
                continue
            errors = pairs(r["max_abs_error"])
            rows.append(
                [
                    case,
                    backend,
                    num(r["inference_ms"]),
                    num(r["inference_speedup_vs_official"]) + "×",
                    num(r["train_step_ms"]),
                    num(r["train_speedup_vs_official"]) + "×",
                    f"{num(r['inference_peak_MB'] / 1024)} / {num(r['train_peak_MB'] / 1024)}",
                    errors,
                ]
            )
    out += [
        f"\nNative CHGNet ({e['weights']} weights, {e['dtype']}) against official on {e['device']}, E+F+S+M; "
        f"training step with double backward. Targets {t['inference_speedup_vs_official']}× inference, "
        f"{t['training_speedup_vs_official']}× training; tolerances {pairs(e['tolerances'])}.\n",
        table(
            [
                "case",
                "backend",
                "inference ms",
                "×",
                "train step ms",
                "×",
                "peak GB infer / train",
                "max error vs official",
            ],
            rows,
        ),
    ]
    return "\n".join(out)


def _suite_gpu(d: dict) -> str:
    rows = []
    for mode in ("alone", "at_once"):
        for r in d[mode]["runs"]:
            rows.append(
                [mode.replace("_", " "), r["name"], r["steps"], num(r["s_per_step"])]
                + [f"{num(r['test_mae_gpu'][t])} / {num(r['test_mae_cpu'][t])}" for t in TARGETS]
            )
    summary = "; ".join(
        f"{mode.replace('_', ' ')}: {d[mode]['count']} run(s), {num(d[mode]['aggregate_steps_per_s'])} steps/s together"
        for mode in ("alone", "at_once")
    )
    hours = ", ".join(f"{k.replace('_', ' ')} {num(v)} h" for k, v in d["full_level_hours"].items())
    return (
        f"{d['level']} level runs, {d['training_steps']} training steps. {summary}. The full level at these rates: "
        f"{hours}.\n\n" + table(["", "run", "steps", "s per step"] + [f"{t} MAE GPU / CPU" for t in TARGETS], rows)
    )


def _transfer_lr(d: dict) -> str:
    header = ["N_high", "lr", "seeds", "E before", "E best", "E last", "largest E change", "ends worse"]
    header += ["F before", "F best", "F last"]
    rows = [
        [r["n_high"], f"{r['lr']:g}", r["seeds"]]
        + [num(r[f"energy_{k}"]) for k in ("before", "best", "last", "max_jump")]
        + [f"{r['ends_worse']} of {r['seeds']}"]
        + [num(r[f"forces_{k}"]) for k in ("before", "best", "last")]
        for r in d["summary"]
    ]
    pretrain, kwargs = d["pretrain"], d["backbone_kwargs"]
    size = f"{kwargs.get('atom_fea_dim', 64)} features, {kwargs.get('n_conv', 4)} convolutions"
    return (
        f"transfer's fine-tuning stage at several learning rates: the suite's {d['level']}-level CHGNet ({size}) "
        f"on the {d['dataset']} set, "
        f"pre-trained once per seed on its low-fidelity frames ({pretrain['epochs']} epochs at lr {pretrain['lr']:g}), "
        f"then readout and heads fine-tuned on N_high high-fidelity frames for {d['epochs']} epochs (cosine "
        f"schedule, batch 4). Validation MAE on {d['n_val']} high-fidelity frames only (the test frames are never "
        "evaluated), means over seeds: energy (E) meV/atom, forces (F) meV/Å, before fine-tuning (composition "
        "refitted), at the epoch best-on-validation picks and at the last epoch; the largest change of E between "
        "two epochs; the seeds whose last epoch is worse than before fine-tuning.\n\n" + table(header, rows)
    )


RENDERERS: dict[str, tuple[str, str, Callable[[dict], str]]] = {
    # file: (title, script that writes it, renderer)
    "speed_chgnet.json": ("Native against official CHGNet, CPU", "benchmarks/speed_chgnet.py", _speed_chgnet),
    "compile_chgnet.json": ("Compiled against eager CHGNet, CPU", "benchmarks/compile_chgnet.py", _compile_chgnet),
    "overhead_mf.json": ("MultiFidelity overhead at inference", "benchmarks/overhead_mf.py", _overhead_mf),
    "train_step.json": ("Training step against the official Trainer", "benchmarks/train_step.py", _train_step),
    "train_step_1thread_batch4_quiet.json": (
        "Training step, 1 thread, batch 4, on a quiet machine (a rerun of that "
        "block above, which had a suite job beside it)",
        "benchmarks/train_step.py",
        _train_step,
    ),
    "train_step_scaling.json": ("Training step against cell size", "benchmarks/train_step.py", _train_step_scaling),
    "fidelity_term.json": ("The fidelity term in compiled training", "benchmarks/fidelity_term.py", _fidelity_term),
    "fidelity_gap.json": ("The gap between the LMFP fidelities", "benchmarks/fidelity_gap.py", _fidelity_gap),
    "sevenn_mf.json": ("SevenNet multi-modal against mfwrap ECMR", "benchmarks/sevenn_mf.py", _head_to_head),
    "matgl_mf.json": ("matgl M3GNet with its state against mfwrap ECMR", "benchmarks/matgl_mf.py", _head_to_head),
    "lmfp_full_mf_vs_sf.json": (
        "Full LMFP set, MF against single-fidelity",
        "python -m mfwrap.demo --size full",
        _lmfp_full,
    ),
    "speed_gpu.json": ("GPU: scatter kernels and CHGNet against official", "benchmarks/speed_gpu.py", _speed_gpu),
    "suite_gpu.json": ("GPU: suite runs on one GPU", "benchmarks/suite_gpu.py", _suite_gpu),
    "transfer_lr.json": ("The learning rate of transfer's fine-tuning", "benchmarks/transfer_lr.py", _transfer_lr),
}


def _suite_cost(suite: Path) -> str:
    """What the suite's finished runs took: runs, wall hours and median seconds per step per data set and
    backbone (runs copied between experiments, ``reused_from``, counted once), and the machines they record."""
    runs = {
        r["name"]: r
        for path in sorted(suite.glob("*.json"))
        for r in json.loads(path.read_text(encoding="utf-8"))["runs"]
        if not r.get("reused_from")
    }
    if not runs:
        return ""
    groups: dict[tuple, list[dict]] = {}
    for r in runs.values():
        groups.setdefault((r["level"], r["spec"]["dataset"].split("-")[0], r["spec"]["backbone"]), []).append(r)
    rows = [
        [
            *key,
            len(members),
            num(sum(r["wall_s"] for r in members) / 3600),
            num(statistics.median(r["wall_s"] / r["steps"] for r in members if r.get("steps"))),
        ]
        for key, members in sorted(groups.items())
    ]
    machines = sorted({pairs({k: v for k, v in r["machine"].items() if v is not None}) for r in runs.values()})
    return (
        f"The finished runs: {len(runs)}, {num(sum(r['wall_s'] for r in runs.values()) / 3600)} run-hours of "
        f"wall time (evaluation and compilation included), on {'; '.join(machines)}.\n\n"
        + table(["level", "data set", "backbone", "runs", "run-hours", "median s per step"], rows)
    )


def _gpu_logs(results: Path, link: Callable[[Path], str]) -> str:
    """The raw outputs of the GPU session (``gpu/``): when and on what, and the files."""
    folder = results / "gpu"
    lines = []
    smi = folder / "nvidia-smi.txt"
    if smi.exists():
        text = smi.read_text(encoding="utf-8")
        gpus = re.findall(r"^\|\s+\d+\s+(NVIDIA\S*(?: \S+)*?)\s{2,}", text, re.MULTILINE)
        cuda = re.search(r"CUDA Version: (\S+)", text)
        lines.append(
            f"[nvidia-smi]({link(smi)}) at the session: {text.splitlines()[0].strip()}; "
            f"{', '.join(gpus) or 'GPU: see the file'}, CUDA {cuda.group(1) if cuda else 'not recorded'}.\n"
        )
    for log in sorted(folder.glob("*.log")):
        summary = [
            line
            for line in log.read_text(encoding="utf-8").splitlines()
            if re.match(r"^=*\s*\d+ (passed|failed)", line)
        ]
        lines.append(f"- [{log.name}]({link(log)})" + (f": {summary[-1].strip('= ')}" if summary else ""))
    return "\n".join(lines)


# --- figures the templates name ---------------------------------------------------------------------------------


def _load(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def figures(results_dir: str | Path) -> dict[str, str]:
    """Every figure a template may name, computed from the result files that exist; block figures
    (``levels_table``) are markdown."""
    results = Path(results_dir)
    found: dict[str, str] = {"levels_table": _levels_table()}
    if suite_gpu := _load(results, "suite_gpu.json"):
        runs = suite_gpu["alone"]["runs"] + suite_gpu["at_once"]["runs"]
        found["noise.runs"] = str(len(runs))
        for t in TARGETS:
            diffs = [r["test_mae_gpu"][t] / r["test_mae_cpu"][t] - 1 for r in runs]
            found[f"noise.{t}"] = f"{100 * max(map(abs, diffs)):.0f} %"
            found[f"noise.{t}_range"] = f"{pct(min(diffs))} … {pct(max(diffs))}"
        found["suite_gpu.s_per_step_alone"] = num(suite_gpu["alone"]["runs"][0]["s_per_step"])
        found["suite_gpu.steps_per_s_at_once"] = num(suite_gpu["at_once"]["aggregate_steps_per_s"])
        found["suite_gpu.at_once_count"] = str(suite_gpu["at_once"]["count"])
        for key, hours in suite_gpu["full_level_hours"].items():
            found[f"suite_gpu.full_hours_{key}"] = num(hours)
    if gap := _load(results, "fidelity_gap.json"):
        found["gap.forces"] = num(gap["forces_meV_per_A"]["low_vs_high_mae"])
        found["gap.forces_scale"] = num(gap["forces_meV_per_A"]["zero_prediction_mae"])
        found["gap.stress"] = num(gap["stress_GPa"]["low_vs_high_mae"])
        found["gap.stress_scale"] = num(gap["stress_GPa"]["zero_prediction_mae"])
        found["gap.energy_corrected"] = num(gap["energy_meV_per_atom"]["low_plus_composition_correction_mae"])
    if term := _load(results, "fidelity_term.json"):
        for threads, variants in term["threads"].items():
            for variant, r in variants.items():
                found[f"term.{variant.split()[-1]}_{threads}t"] = pct(r["overhead_vs_bare"])
    if compiled := _load(results, "compile_chgnet.json"):
        found["compile.train_speedup"] = num(compiled["workloads"]["train4"]["speedup"]) + "×"
        found["compile.first_call_s"] = num(max(w["compile_s"] for w in compiled["workloads"].values()))
    if step := _load(results, "train_step.json"):
        rows = {(b["threads"], b["batch_size"]): b["rows"] for b in step["blocks"]}
        one, two = rows.get((1, 16)), rows.get((2, 16))
        if one and two:
            found["train.compiled_second_thread"] = (
                num(one["native compiled"]["median_s_per_step"] / two["native compiled"]["median_s_per_step"], 2) + "×"
            )
        if "4" in step.get("ddp", {}):
            found["train.ddp_vs_threads"] = num(step["ddp"]["4"]["speedup_vs_1_process_2_threads"]) + "×"
    if curve := _load(results, f"suite/{SUITE_LEVEL}/learning_curve.json"):
        shares = {
            r["n_train"]["high"]: r["n_train"]["low"] / (r["n_train"]["low"] + r["n_train"]["high"])
            for r in curve["runs"]
            if r["spec"]["method"] == "multi_fidelity" and r["n_train"]["low"]
        }
        if shares:
            found["suite.low_share_smallest"] = f"{100 * shares[min(shares)]:.0f} %"
            found["suite.high_share_smallest"] = f"{100 * (1 - shares[min(shares)]):.0f} %"
            found["suite.n_high_smallest"] = str(min(shares))
    return found


def _levels_table() -> str:
    sizes = lambda ns: ", ".join("all" if n is None else str(n) for n in ns)  # noqa: E731
    rows = [
        [
            level.name,
            level.lmfp_size,
            sizes(level.n_high),
            level.n_val,
            level.epochs,
            level.max_epochs,
            f"{level.plateau_patience} / {level.patience}",
            ", ".join(level.protocols)
            + (f"; converged at N_high {sizes(level.converged_high)}" if level.converged_high else ""),
            "tiny" if BACKBONES["chgnet"].kwargs_at(level.name) else "paper",
            "yes" if level.compile else "no",
        ]
        for level in LEVELS.values()
    ]
    return table(
        [
            "level",
            "LMFP set",
            "N_high",
            "validation frames",
            "epochs",
            "converged ceiling (MF epochs)",
            "plateau / stop patience (MF epochs)",
            "protocols",
            "models",
            "compiled steps",
        ],
        rows,
    )


def fill(template: str, found: dict[str, str], source: str) -> str:
    """``template`` with each ``{{name}}`` replaced by its figure; a name with no figure raises naming it."""
    missing = sorted({m.group(1) for m in PLACEHOLDER.finditer(template)} - found.keys())
    if missing:
        raise ValueError(
            f"{source}: no figure named {', '.join(missing)} (no result file gives it); "
            f"known figures: {', '.join(sorted(found))}"
        )
    return PLACEHOLDER.sub(lambda m: found[m.group(1)], template)


# --- the document -------------------------------------------------------------------------------------------------


def render(results_dir: str | Path = "benchmarks/results", out: str | Path = "benchmarks/README.md") -> str:
    """The document's text, its links relative to ``out``'s folder."""
    results, out = Path(results_dir), Path(out)
    link = lambda path: Path(os.path.relpath(Path(path).resolve(), out.resolve().parent)).as_posix()  # noqa: E731
    found = figures(results)
    templates = {}
    for name in TEMPLATES:
        if not (results / name).exists():
            raise FileNotFoundError(f"{results / name}: the document's template is missing; restore it from git")
        templates[name] = fill((results / name).read_text(encoding="utf-8"), found, str(results / name)).strip()
    unknown = sorted(p.name for p in results.glob("*.json") if p.name not in RENDERERS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)} in {results}: no renderer; add one to mfwrap.bench.document.RENDERERS")
    parts = [
        f"# Benchmark results\n\n<!-- Generated by `python -m mfwrap.bench.document`: do not edit by hand. -->\n"
        f"This document is generated from the result files in [`{link(results)}/`]({link(results)}/): the prose\n"
        "from the templates `methods.md` and `discussion.md` there, every figure from a result file. To change\n"
        "it, edit a template or rerun a benchmark, then run `python -m mfwrap.bench.document` (with `--check`\n"
        "it only tells whether this file is current).",
        templates["methods.md"],
        "## The benchmark suite",
    ]
    suite = results / "suite" / SUITE_LEVEL
    if cost := _suite_cost(suite):
        parts.append(cost)
    if (suite / "claims.md").exists():
        parts.append((suite / "claims.md").read_text(encoding="utf-8").strip())
    order = {name: i for i, name in enumerate(EXPERIMENTS)}
    for path in sorted(suite.glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem)):
        table_md = path.with_suffix(".md")
        text = (
            table_md.read_text(encoding="utf-8").strip()
            if table_md.exists()
            else f"### {path.stem}\n\n(no table: run `mfwrap bench report`)"
        )
        plot = path.with_suffix(".png")
        text += f"\n\nEvery run: [`{path.name}`]({link(path)})."
        if plot.exists():
            text += f"\n\n![{path.stem}]({link(plot)})"
        parts.append(text)
    foundation_md = results / "suite" / "foundation.md"
    if foundation_md.exists():  # mfwrap bench foundation (mfwrap.bench.foundation_runs)
        text = foundation_md.read_text(encoding="utf-8").strip()
        text += f"\n\nEvery run: [`foundation.json`]({link(results / 'suite' / 'foundation.json')})."
        if (plot := results / "suite" / "foundation.png").exists():
            text += f"\n\n![foundation]({link(plot)})"
        parts.append(text)
    parts.append(
        "## Speed and other benchmarks\n\nEach table below is one result file, with what that file records "
        "about its machine and date."
    )
    for name, (title, script, renderer) in RENDERERS.items():
        data = _load(results, name)
        body = renderer(data) + "\n\n" + provenance(data) if data is not None else "Not measured yet."
        parts.append(f"### {title}\n\n`{script}` → [`{name}`]({link(results / name)}).\n\n{body}")
    if (results / "gpu").is_dir():
        parts.append("### GPU session outputs\n\n" + _gpu_logs(results, link))
    parts.append(templates["discussion.md"])
    headings = [line[3:] for part in parts for line in part.splitlines() if line.startswith("## ")]
    contents = "\n".join(f"- [{h}](#{_anchor(h)})" for h in headings)
    return "\n\n".join(parts[:1] + [contents] + parts[1:]) + "\n"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def write_results_document(
    results_dir: str | Path = "benchmarks/results", out: str | Path = "benchmarks/README.md"
) -> Path:
    """Generate the results document from ``results_dir`` and write it to ``out``; returns ``out``."""
    out = Path(out)
    text = render(results_dir, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfwrap.bench.document", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="benchmarks/results", help="the result files (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/README.md", help="the document (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out is not current")
    args = parser.parse_args(argv)
    try:
        text = render(args.results, args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        current = Path(args.out).read_text(encoding="utf-8") if Path(args.out).exists() else None
        if current != text:
            print(
                f"{args.out} is not what {args.results} generates: run python -m mfwrap.bench.document", file=sys.stderr
            )
            return 1
        return 0
    write_results_document(args.results, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
