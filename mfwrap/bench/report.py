"""``mfwrap bench report``: the suite's results, averaged over seeds, as JSON, markdown and plots.

Each level has its own folders: the runs of level L are under ``<root>/L/`` and their report goes to
``<out>/L/`` (``mfwrap bench``'s defaults: ``runs/suite/L``, ``benchmarks/results/suite/L``), so that
the results of one level never replace another's. For every experiment with finished runs under a
level's root, writes to its ``out``:
``<experiment>.json`` (each group's mean and sample standard deviation over seeds of the
high-fidelity test MAE and RMSE per target, its steps and wall time, and every run's own result),
``<experiment>.md`` (a table; protocol and steps in every row) and ``<experiment>.png``
(learning curves on a log N_high axis with ±1 sd error bars, or bars for ablations and coverage);
and ``claims.md``, the seed paper's claims checked against them (:mod:`mfwrap.bench.claims`).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from mfwrap.bench.grid import ABLATIONS
from mfwrap.bench.methods import METHODS
from mfwrap.bench.result import RunResult, read_result, read_runs, warn_damaged
from mfwrap.files import remove_interrupted_writes, write_text

UNITS = {"energy": "meV/atom", "forces": "meV/Å", "stress": "GPa", "magmoms": "μB"}
_ABLATION_NAMES = {mechanisms: name for name, mechanisms in ABLATIONS.items()}
_GROUP_KEYS = ("dataset", "backbone", "method", "mechanisms", "protocol", "region")


def label(spec: dict, ablation: bool = False) -> str:
    """How a run's method reads in tables and legends (``spec``: a run spec's or a group's fields;
    ``ablation``: in an ablation table, where multi-fidelity reads by its mechanisms, F, R̄, ...)."""
    method = METHODS[spec["method"]]
    if spec["method"] != "multi_fidelity":
        return (method.ablation_label or method.label) if ablation else method.label
    if ablation:
        return _ABLATION_NAMES.get(spec["mechanisms"], spec["mechanisms"] or "none")
    return f"{method.label} ({spec['mechanisms'] or 'no mechanism'})"


def gap_alpha(dataset: str) -> float:
    """The fidelity-gap dial α of an LMFP variant (1 for the shipped set; mfwrap.datasets.lmfp_gap)."""
    from mfwrap.datasets.lmfp_gap import gap_of

    return 1.0 if dataset == "lmfp" else gap_of(dataset)


def data_label(dataset: str) -> str:
    """How a run's data set reads in a table: LMFP variants by their gap α."""
    return f"LMFP, gap α = {gap_alpha(dataset):g}" if dataset.startswith("lmfp") else dataset


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(results: list[RunResult]) -> list[dict]:
    """One group per (dataset, backbone, method, mechanisms, protocol, region, N_high, N_low): mean ± sd over seeds
    of runs that differ in nothing else (ValueError naming two that do, :mod:`mfwrap.bench.identity`);
    in table order (protocol, N_high, N_low, method as in :data:`mfwrap.bench.methods.METHODS`, mechanisms as in
    the paper's ablations: N, F, C, E, M, R, C̄, Ē, M̄, R̄)."""
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for result in results:
        key = tuple(getattr(result.spec, k) for k in _GROUP_KEYS) + (result.n_train["high"], result.n_train["low"])
        groups[key].append(result)
    rows = []
    for key, members in sorted(groups.items(), key=lambda item: tuple(str(k) for k in item[0])):
        _refuse_mixed(members)
        tests = [m.test[m.target_fidelity] for m in members]
        row = dict(zip(_GROUP_KEYS, key[:-2]), n_high=key[-2], n_low=key[-1], seeds=[m.spec.seed for m in members])
        row["test"] = {}
        for target in tests[0]:
            mae, mae_sd = _mean_sd([t[target]["mae"] for t in tests])
            rmse, rmse_sd = _mean_sd([t[target]["rmse"] for t in tests])
            row["test"][target] = {"mae": mae, "mae_sd": mae_sd, "rmse": rmse, "rmse_sd": rmse_sd}
        steps = [m.steps for m in members if m.steps is not None]
        row["steps"] = statistics.fmean(steps) if steps else None
        row["wall_s"] = statistics.fmean(m.wall_s for m in members)
        rows.append(row)
    order, methods = list(ABLATIONS.values()), list(METHODS)
    rows.sort(
        key=lambda r: (
            r["protocol"],
            r["n_high"],
            r["n_low"],
            methods.index(r["method"]),
            order.index(r["mechanisms"]) if r["mechanisms"] in order else len(order),
        )
    )
    return rows


def _refuse_mixed(members: list[RunResult]) -> None:
    """ValueError naming the runs if the members of one group differ in anything but their seed (identity)."""
    from mfwrap.bench.identity import differences, identity_of

    first = {k: v for k, v in identity_of(members[0]).items() if k != "seed"}
    for other in members[1:]:
        if changed := differences({k: v for k, v in identity_of(other).items() if k != "seed"}, first):
            raise ValueError(
                f"runs {other.spec.experiment}/{other.name} and {members[0].spec.experiment}/{members[0].name} "
                f"differ in {'; '.join(changed)}: not averaged together; give each level or version its own root"
            )


def markdown(experiment: str, rows: list[dict]) -> str:
    targets = [t for t in UNITS if any(t in row["test"] for row in rows)]
    ablation = experiment in ("ablations", "second_backbone")
    several_backbones = len({row["backbone"] for row in rows}) > 1  # then every row names its backbone
    from mfwrap.bench.runner import family

    datasets = {row["dataset"] for row in rows}
    name_data = len(datasets) > 1 or any(family(d) != d for d in datasets)  # then every row names it (gap: α)
    header = (
        ["data"] * name_data
        + ["backbone"] * several_backbones
        + ["method", "N_high", "N_low", "protocol", "steps", "seeds"]
        + [f"{t} MAE ({UNITS[t]})" for t in targets]
    )
    lines = [f"### {experiment}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = (
            [data_label(row["dataset"])] * name_data
            + [row["backbone"]] * several_backbones
            + [
                label(row, ablation),
                str(row["n_high"]),
                str(row["n_low"]),
                row["protocol"],
                f"{row['steps']:.0f}" if row["steps"] is not None else "–",
                str(len(row["seeds"])),
            ]
        )
        for target in targets:
            stats = row["test"].get(target)
            cells.append(f"{stats['mae']:.3g} ± {stats['mae_sd']:.2g}" if stats else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(experiment: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in UNITS if any(t in row["test"] for row in rows)]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False)
    bars = experiment in ("ablations", "coverage")
    ablation = experiment in ("ablations", "second_backbone")
    x_key = {"low_fidelity_size": "n_low", "fidelity_gap": "alpha"}.get(experiment, "n_high")

    def x_of(r):
        return gap_alpha(r["dataset"]) if x_key == "alpha" else r[x_key]

    def series_name(r):
        name = (
            f"{label(r, ablation)}, N_high = {r['n_high']}"
            if x_key == "alpha"
            else f"N_high = {r['n_high']}"
            if x_key == "n_low"
            else label(r, ablation)
        )
        return f"{name}, {r['protocol']}, {r['backbone']}"

    every_series = list(dict.fromkeys(series_name(r) for r in rows))  # one colour per series in every panel
    palette = plt.get_cmap("tab10" if len(every_series) <= 10 else "tab20")
    colours = {name: palette(i % palette.N) for i, name in enumerate(every_series)}
    for ax, target in zip(axes[0], targets):
        having = [r for r in rows if target in r["test"]]  # e.g. SchNet rows have no magmoms
        if bars:
            names = [label(r, ablation) + ("" if r["protocol"] == "paper" else f" [{r['protocol']}]") for r in having]
            values = [r["test"][target]["mae"] for r in having]
            errors = [r["test"][target]["mae_sd"] for r in having]
            ax.bar(range(len(having)), values, yerr=errors, capsize=3, color="tab:blue")
            ax.set_xticks(range(len(having)), names, rotation=45, ha="right")
        else:
            series: dict[str, list[dict]] = defaultdict(list)
            for r in having:
                series[series_name(r)].append(r)
            for name, members in series.items():
                members.sort(key=x_of)
                xs = [x_of(r) for r in members]
                if x_key == "alpha" and members[0]["method"] == "single_fidelity":  # no low fidelity: a level line
                    xs, members = [0.0, 1.0], members * 2
                ax.errorbar(
                    xs,
                    [r["test"][target]["mae"] for r in members],
                    yerr=[r["test"][target]["mae_sd"] for r in members],
                    marker="o",
                    capsize=3,
                    label=name,
                    color=colours[name],
                )
            if x_key == "n_high":  # N_low includes 0, α too: linear axes
                ax.set_xscale("log")
            ax.set_xlabel(
                {
                    "n_low": "low-fidelity training frames",
                    "n_high": "high-fidelity training frames",
                    "alpha": "fidelity gap α (low labels = high + α (low − high))",
                }[x_key]
            )
            ax.legend(fontsize=6)
        ax.set_ylabel(f"{target} test MAE ({UNITS[target]})")
    fig.suptitle(f"{experiment}: high-fidelity test error (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def experiment_report(experiment: str, results: list[RunResult]) -> tuple[list[dict], str, str]:
    """The groups of ``experiment``'s results (:func:`aggregate`), the text of ``<experiment>.json``
    (groups and every run's result, in the order given) and of ``<experiment>.md``."""
    rows = aggregate(results)
    runs = [result.to_json() for result in results]
    text = json.dumps({"experiment": experiment, "groups": rows, "runs": runs}, indent=1, default=float)
    return rows, text, markdown(experiment, rows)


def write_report(root: str | Path, out: str | Path, force: bool = False) -> list[Path]:
    """Aggregate every experiment under ``root`` (the runs of one level) into ``out``; returns the files
    written. A report never replaces, unless ``force``, an ``<experiment>.json`` in ``out`` that holds
    results of another level or more runs than the new one: ValueError naming the file, before anything
    is written."""
    root, out = Path(root), Path(out)
    planned: dict[str, list[RunResult]] = {}
    for experiment_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        results = [r for p in sorted(experiment_dir.glob("*/result.json")) if (r := read_result(p)) is not None]
        if results:
            planned[experiment_dir.name] = results
    levels = sorted({result.level for results in planned.values() for result in results})
    if len(levels) > 1:
        raise ValueError(f"{root} holds runs of the levels {levels}; a report is of one level: give each its own root")
    refusals = [] if force else [line for e, results in planned.items() if (line := _refusal(out, e, results))]
    if refusals:
        raise ValueError("\n".join(refusals))
    if out.is_dir():
        remove_interrupted_writes(out, older_than_s=60)  # left by a killed report
    written = []
    for experiment, results in planned.items():
        rows, json_text, table = experiment_report(experiment, results)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / f"{experiment}.json", json_text)
        write_text(out / f"{experiment}.md", table)
        plot(experiment, rows, out / f"{experiment}.png")
        written += [out / f"{experiment}.{suffix}" for suffix in ("json", "md", "png")]
    if written:
        from mfwrap.bench.claims import claims_document
        from mfwrap.bench.document import SUITE_LEVEL, write_results_document

        write_text(out / "claims.md", claims_document(out))
        written.append(out / "claims.md")
        results_dir = out.parent.parent  # out is benchmarks/results/suite/<level>: the results document follows
        if out.name == SUITE_LEVEL and out.parent.name == "suite" and (results_dir / "methods.md").exists():
            written.append(write_results_document(results_dir, results_dir.parent / "README.md"))
    return written


def _refusal(out: Path, experiment: str, results: list[RunResult]) -> str | None:
    """Why the report of ``results`` must not replace ``out/<experiment>.json`` (None: it may)."""
    path = out / f"{experiment}.json"
    if not path.is_file():
        return None
    try:
        existing = read_runs(path)
    except ValueError as error:
        warn_damaged(path, error, "it is replaced")
        return None
    level = results[0].level
    other_levels = sorted({run.level for run in existing} - {level})
    if other_levels:
        kinds = "/".join(other_levels)
        return f"{path} holds {kinds}-level results; not replaced by {level}-level ones (--force replaces it)"
    if len(existing) > len(results):
        return f"{path} holds {len(existing)} runs; not replaced by a report of {len(results)} (--force replaces it)"
    return None


def write_reports(root: str | Path, out: str | Path, level: str | None = None, force: bool = False) -> list[Path]:
    """``mfwrap bench report``: the report of each level's runs (``root/<level>/``, or only ``level``'s)
    into ``out/<level>/`` (:func:`write_report`); ValueError naming ``root`` if it holds no finished run."""
    from mfwrap.bench.grid import LEVELS

    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ValueError(f"{root}: no such directory (--root names the folder the runs of mfwrap bench are in)")
    warn_old_layout(root)
    written = []
    for name in [level] if level else list(LEVELS):
        written += write_report(root / name, out / name, force)
    if not written:
        where = f"{root}/{level}" if level else f"{root}/<level>"
        raise ValueError(f"no finished run under {where}/<experiment>/<run>/result.json: nothing to report (--root?)")
    return written


def warn_old_layout(root: Path) -> None:
    """One warning line if ``root`` holds experiment folders directly (runs written before levels had folders)."""
    from mfwrap.bench.grid import EXPERIMENTS

    old = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in EXPERIMENTS)
    if old:
        print(
            f"warning: {root}/{{{','.join(old)}}}: runs of the layout without level folders, not read; move "
            f"them to {root}/<level>/ to report them",
            file=sys.stderr,
        )
