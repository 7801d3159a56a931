"""The seed paper's claims, one by one, checked against the suite's aggregated results.

:func:`check_claims` reads every run's result (the "runs" of each ``<experiment>.json`` that
``mfwrap bench report`` writes) and returns one :class:`Verdict` per claim of :data:`CLAIMS`:
"holds" (every comparison goes the claimed way), "fails" (none does), "partly", or "not measured"
(the runs are missing). ``mfwrap bench report`` writes the verdicts to ``claims.md``.

Most claims are declared :class:`Comparison` s of two :class:`Selection` s of runs: ours below
``factor`` × theirs in the mean over the seeds *both* sides have of the high-fidelity test MAE, per
shared N_high ≤ ``max_high`` and target; each line names the seeds, with how many of them (each its
own data subsets and initialisation, the same for both sides) go the way of the means; with one
seed a difference of a few per cent is within the noise between seeds. A few claims are checks of
their own: more low-fidelity data lowering the error, F best among the ablations, and MF's error
falling with the fidelity gap α (:mod:`mfwrap.datasets.lmfp_gap`).

One selection is not a method but a choice: MF with its trainer option *chosen on the validation
frames* among the options at MF's own steps (:attr:`mfwrap.bench.methods.Method.selectable`), per
backbone, N_high and seed, by the paper's weighted validation MAE Σ_t w_t MAE_t (w = 1, 1, 0.1, 0.1
in eV/atom, eV/Å, GPa, μB). It is how a user would pick an option; the test set never enters it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mfwrap.bench.methods import METHODS
from mfwrap.bench.result import RunResult, read_runs, warn_damaged

TARGETS = ("energy", "forces", "stress", "magmoms")
# the seed paper's loss weights over the reported units (meV/atom, meV/Å, GPa, μB): the weighted validation MAE
# in eV units
SELECTION_WEIGHTS = {"energy": 1e-3, "forces": 1e-3, "stress": 0.1, "magmoms": 0.1}
SHORT = {"energy": "E", "forces": "F", "stress": "S", "magmoms": "M"}
CHOSEN = "chosen on validation"  # a Selection's method: the selectable MF option chosen per N_high and seed

Report = dict[str, list[RunResult]]  # {experiment: every run's result}
Runs = dict  # {N_high: {seed: {target: MAE}}}


@dataclass
class Verdict:
    """One claim: its status and the comparisons behind it (one line each)."""

    claim: str
    status: str
    evidence: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Selection:
    """The runs of one method in one experiment, under one protocol, backbone, data set and region
    (None: the whole set), with mechanisms ``mechanisms``; ``name``: how they read in the evidence.
    ``method`` :data:`CHOSEN`: per N_high and seed, the option chosen on validation (module docstring)."""

    name: str
    experiment: str
    method: str
    protocol: str = "paper"
    mechanisms: str = "ECMR"
    backbone: str = "chgnet"
    dataset: str = "lmfp"
    region: str | None = None

    def matches(self, run: RunResult, method: str) -> bool:
        spec = run.spec
        return (
            spec.method == method
            and spec.protocol == self.protocol
            and spec.dataset == self.dataset
            and spec.backbone == self.backbone
            and spec.region == self.region
            and spec.mechanisms == self.mechanisms
        )

    def runs(self, report: Report) -> Runs:
        """{N_high: {seed: high-fidelity test MAE per target}}."""
        found: Runs = {}
        for run in report.get(self.experiment, []):
            if self.matches(run, self.method):
                found.setdefault(run.n_train["high"], {})[run.spec.seed] = run.test_mae
        return found

    def chosen(self, report: Report) -> tuple[Runs, dict[int, dict[int, str]]]:
        """Per (N_high, seed), the test MAEs of the selectable method with the lowest weighted validation
        MAE (:data:`SELECTION_WEIGHTS`), and {N_high: {seed: chosen method}}. A (N_high, seed) is left out
        until every selectable method has finished, so that a choice never changes by a run arriving later."""
        methods = [name for name, method in METHODS.items() if method.selectable]
        candidates: dict[int, dict[int, dict[str, RunResult]]] = {}
        for run in report.get(self.experiment, []):
            if run.spec.method in methods and self.matches(run, run.spec.method):
                candidates.setdefault(run.n_train["high"], {}).setdefault(run.spec.seed, {})[run.spec.method] = run
        found: Runs = {}
        chosen: dict[int, dict[int, str]] = {}
        for n, by_seed in candidates.items():
            for seed, by_method in by_seed.items():
                if set(by_method) != set(methods):
                    continue
                method = min(sorted(by_method), key=lambda m: _validation_score(by_method[m]))
                found.setdefault(n, {})[seed] = by_method[method].test_mae
                chosen.setdefault(n, {})[seed] = method
        return found, chosen


@dataclass(frozen=True)
class Comparison:
    """Ours below ``factor`` × theirs, for every shared N_high ≤ ``max_high`` and each of ``targets``."""

    ours: Selection
    theirs: Selection
    targets: tuple[str, ...] = TARGETS
    max_high: float = math.inf
    factor: float = 1.0


Check = Callable[[Report], tuple[list[bool], list[str]]]  # a claim's own check: (outcomes, evidence lines)


@dataclass(frozen=True)
class Claim:
    """A claim: the comparisons that judge it, or a check of its own."""

    text: str
    comparisons: tuple[Comparison, ...] = ()
    check: Check | None = None


def _validation_score(run: RunResult) -> float:
    """A run's weighted validation MAE (:data:`SELECTION_WEIGHTS`), the same for every MF option."""
    val = run.val[run.target_fidelity]
    return sum(w * val[t]["mae"] for t, w in SELECTION_WEIGHTS.items() if t in val)


def _status(outcomes: list[bool]) -> str:
    if not outcomes:
        return "not measured"
    return "holds" if all(outcomes) else "fails" if not any(outcomes) else "partly"


def _mean(by_seed: dict[int, dict], seeds: list[int], target: str) -> float:
    return sum(by_seed[s][target] for s in seeds) / len(seeds)


def _compare(
    ours: Runs, theirs: Runs, targets, names, max_high: float = math.inf, factor: float = 1.0
) -> tuple[list[bool], list[str]]:
    """Mean over the seeds both have: ours below factor × theirs, for every shared N_high ≤ max_high and target."""
    outcomes, lines = [], []
    for n in sorted(set(ours) & set(theirs)):
        seeds = sorted(set(ours[n]) & set(theirs[n]))
        if n > max_high or not seeds:
            continue
        for target in targets:
            if all(target in ours[n][s] and target in theirs[n][s] for s in seeds):
                a, b = _mean(ours[n], seeds, target), _mean(theirs[n], seeds, target)
                better = a < factor * b
                outcomes.append(better)
                # the same seed = the same data subsets: how many seeds agree with the means
                paired = sum(ours[n][s][target] < factor * theirs[n][s][target] for s in seeds)
                agree = (
                    f", {paired if better else len(seeds) - paired}/{len(seeds)} seeds agree" if len(seeds) > 1 else ""
                )
                lines.append(
                    f"N_high {n}, {SHORT[target]}: {names[0]} {a:.3g} vs {names[1]} {b:.3g} "
                    f"({100 * (a / b - 1):+.0f} %) {'✓' if better else '✗'} (seeds {seeds}{agree})"
                )
    return outcomes, lines


def _judge(comparison: Comparison, report: Report) -> tuple[list[bool], list[str]]:
    """One comparison's outcomes and lines; a choice on validation adds a line per N_high naming it."""
    ours, chosen = (
        comparison.ours.chosen(report) if comparison.ours.method == CHOSEN else (comparison.ours.runs(report), {})
    )
    outcomes, lines = _compare(
        ours,
        comparison.theirs.runs(report),
        comparison.targets,
        (comparison.ours.name, comparison.theirs.name),
        comparison.max_high,
        comparison.factor,
    )
    lines += [
        f"N_high {n}: chosen on validation " + ", ".join(f"seed {s} {c}" for s, c in sorted(chosen[n].items()))
        for n in sorted(chosen)
    ]
    return outcomes, lines


def _more_low_fidelity_data(report: Report) -> tuple[list[bool], list[str]]:
    """Per N_high of the MF (ECMR) runs of ``low_fidelity_size`` and target: the mean MAE at the most
    low-fidelity frames below the mean at the fewest, over the seeds both have."""
    by_low: dict[int, dict[int, dict]] = {}
    for run in report.get("low_fidelity_size", []):
        spec = run.spec
        if spec.method == "multi_fidelity" and spec.mechanisms == "ECMR" and spec.protocol == "paper":
            by_low.setdefault(run.n_train["high"], {}).setdefault(run.n_train["low"], {})[spec.seed] = run.test_mae
    outcomes, lines = [], []
    for n, sizes in sorted(by_low.items()):
        if len(sizes) < 2:
            continue
        fewest, most = min(sizes), max(sizes)
        seeds = sorted(set(sizes[fewest]) & set(sizes[most]))
        for target in TARGETS:
            if seeds and all(target in sizes[fewest][s] and target in sizes[most][s] for s in seeds):
                a, b = _mean(sizes[most], seeds, target), _mean(sizes[fewest], seeds, target)
                outcomes.append(a < b)
                lines.append(
                    f"N_high {n}, {SHORT[target]}: {most} low-fidelity frames {a:.3g} vs {fewest}: {b:.3g} "
                    f"{'✓' if a < b else '✗'} (seeds {seeds})"
                )
    return outcomes, lines


def _ablations(experiment: str, backbone: str) -> Check:
    """Per N_high with ablation variants and target of ``experiment``'s ``backbone`` runs: is F (ECMR) the
    lowest mean over the seeds every variant has (ties go to F)?"""

    def check(report: Report) -> tuple[list[bool], list[str]]:
        runs = report.get(experiment, [])
        variants = {
            m: Selection("", experiment, "multi_fidelity", mechanisms=m, backbone=backbone).runs(report)
            for m in {r.spec.mechanisms for r in runs if r.spec.backbone == backbone}
        }
        outcomes, lines = [], []
        if "ECMR" not in variants or len(variants) < 2:
            return outcomes, lines
        for n in sorted(variants["ECMR"]):
            seeds = sorted(set.intersection(*(set(v.get(n, {})) for v in variants.values())))
            for target in TARGETS if seeds else ():
                means = {m: _mean(v[n], seeds, target) for m, v in variants.items() if target in v[n][seeds[0]]}
                if "ECMR" not in means or len(means) < 2:
                    continue
                best = "ECMR" if means["ECMR"] <= min(means.values()) else min(means, key=means.get)
                outcomes.append(best == "ECMR")
                rival = best if best != "ECMR" else min((m for m in means if m != "ECMR"), key=means.get)
                # per seed: does F beat (✓) or trail (✗) the strongest rival, as the means say?
                f_ahead = sum(variants["ECMR"][n][s][target] <= variants[rival][n][s][target] for s in seeds)
                agree = (
                    f", {f_ahead if best == 'ECMR' else len(seeds) - f_ahead}/{len(seeds)} seeds agree"
                    if len(seeds) > 1
                    else ""
                )
                margin = 100 * (means["ECMR"] / means[rival] - 1)
                lines.append(
                    f"N_high {n}, {SHORT[target]}: F {means['ECMR']:.3g}; "
                    + (
                        f"next {rival or 'none'} {means[rival]:.3g}"
                        if best == "ECMR"
                        else f"best {best or 'none'} {means[best]:.3g}"
                    )
                    + f" (F {margin:+.0f} %) {'✓' if best == 'ECMR' else '✗'} (seeds {seeds}{agree})"
                )
        return outcomes, lines

    return check


GAP = {1.0: "lmfp", 0.5: "lmfp-gap50", 0.0: "lmfp-gap0"}  # the fidelity gap α: the data set with it
GAP_SF = Selection("SF", "fidelity_gap", "single_fidelity", "equal_compute")


def _falls_with_the_gap(report: Report) -> tuple[list[bool], list[str]]:
    """Per N_high and target, over the seeds every α has: MF's mean error falls as α goes 1 → 0.5 → 0
    (single-fidelity at MF's steps alongside, where it ran on those seeds)."""
    by_alpha = {
        alpha: Selection("", "fidelity_gap", "multi_fidelity", dataset=dataset).runs(report)
        for alpha, dataset in GAP.items()
    }
    single = GAP_SF.runs(report)
    outcomes, lines = [], []
    for n in sorted(set.intersection(*(set(runs) for runs in by_alpha.values()))):
        seeds = sorted(set.intersection(*(set(runs[n]) for runs in by_alpha.values())))
        for target in TARGETS if seeds else ():
            if not all(target in runs[n][s] for runs in by_alpha.values() for s in seeds):
                continue
            errors = {alpha: _mean(runs[n], seeds, target) for alpha, runs in by_alpha.items()}
            falls = errors[0.0] < errors[0.5] < errors[1.0]
            outcomes.append(falls)
            sf_seeds = sorted(set(single.get(n, {})) & set(seeds))
            sf = (
                f"; SF at MF's steps {_mean(single[n], sf_seeds, target):.3g}"
                if sf_seeds and target in single[n][sf_seeds[0]]
                else ""
            )
            lines.append(
                f"N_high {n}, {SHORT[target]}: MF at α = 1 / 0.5 / 0: {errors[1.0]:.3g} / "
                f"{errors[0.5]:.3g} / {errors[0.0]:.3g}{sf} {'✓' if falls else '✗'} (seeds {seeds})"
            )
    return outcomes, lines


def _mf_vs_sf(experiment: str, protocol: str, sf_protocol: str, **fields) -> Comparison:
    return Comparison(
        Selection("MF", experiment, "multi_fidelity", protocol, **fields),
        Selection("SF", experiment, "single_fidelity", sf_protocol, **fields),
        max_high=400,
    )


SAME_EPOCHS, SAME_STEPS = "paper protocol (same epochs)", "equal compute (same optimiser steps)"
LC_SF_EQUAL = Selection("SF", "learning_curve", "single_fidelity", "equal_compute")
SCHNET_SF_EQUAL = Selection("SF", "second_backbone", "single_fidelity", "equal_compute", backbone="schnet")
COVERED = {"region": "mn_le_half"}
UNCOVERED = "(SevenNet-MF's) MF ahead where the high fidelity has no frames (trained on Mn ≤ 0.5, tested on Mn > 0.5)"
OPTIONS_TEXT = "(plain, 1:1 sampling, reweighted)"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        f"MF below single-fidelity for N_high ≤ 400 on E, F, S, M — {SAME_EPOCHS}",
        (_mf_vs_sf("learning_curve", "paper", "paper"),),
    ),
    Claim(
        f"MF below single-fidelity for N_high ≤ 400 on E, F, S, M — {SAME_STEPS}",
        (_mf_vs_sf("learning_curve", "paper", "equal_compute"),),
    ),
    Claim(
        "MF below single-fidelity for N_high ≤ 400 on E, F, S, M — converged protocol",
        (_mf_vs_sf("learning_curve", "converged", "converged"),),
    ),
    Claim(
        "target: MF force MAE ≥ 20 % below single-fidelity's at N_high ≤ 100 (paper protocol)",
        (
            Comparison(
                Selection("MF", "learning_curve", "multi_fidelity"),
                Selection("0.8 × SF", "learning_curve", "single_fidelity"),
                ("forces",),
                100,
                0.8,
            ),
        ),
    ),
    Claim(
        "target: MF still ahead on forces under the converged protocol",
        (
            Comparison(
                Selection("MF", "learning_curve", "multi_fidelity", "converged"),
                Selection("SF", "learning_curve", "single_fidelity", "converged"),
                ("forces",),
                100,
            ),
        ),
    ),
    Claim(
        "more low-fidelity data lowers the error — paper protocol (same epochs, so more low-fidelity frames also "
        "means more optimiser steps; N_low = all against none at equal steps is the equal-compute comparison of MF "
        "with single-fidelity above)",
        check=_more_low_fidelity_data,
    ),
    Claim("F (all four mechanisms) best among the ablations", check=_ablations("ablations", "chgnet")),
    Claim(
        "F (all four mechanisms) best among the ablations — the second backbone (SchNet)",
        check=_ablations("second_backbone", "schnet"),
    ),
    Claim(
        "MF ahead of transfer learning on F, S, M — paper protocol (same epochs: transfer fine-tunes for fewer steps)",
        (
            Comparison(
                Selection("MF", "transfer_delta", "multi_fidelity"),
                Selection("transfer, same epochs", "transfer_delta", "transfer"),
                ("forces", "stress", "magmoms"),
            ),
        ),
    ),
    Claim(
        "MF ahead of transfer learning on F, S, M — equal compute (transfer fine-tunes for MF's steps, its "
        "low-fidelity pre-training on top)",
        (
            Comparison(
                Selection("MF", "transfer_delta", "multi_fidelity"),
                Selection("transfer at MF's steps", "transfer_delta", "transfer", "equal_compute"),
                ("forces", "stress", "magmoms"),
            ),
        ),
    ),
    Claim(
        f"the second backbone (SchNet): MF below single-fidelity — {SAME_EPOCHS}",
        (
            Comparison(
                Selection("MF", "second_backbone", "multi_fidelity", backbone="schnet"),
                Selection("SF", "second_backbone", "single_fidelity", backbone="schnet"),
            ),
        ),
    ),
    Claim(
        f"the second backbone (SchNet): MF below single-fidelity — {SAME_STEPS}",
        (Comparison(Selection("MF", "second_backbone", "multi_fidelity", backbone="schnet"), SCHNET_SF_EQUAL),),
    ),
    Claim(
        f"{UNCOVERED} — against single-fidelity at MF's steps",
        (
            Comparison(
                Selection("MF", "coverage", "multi_fidelity", **COVERED),
                Selection("SF", "coverage", "single_fidelity", "equal_compute", **COVERED),
            ),
        ),
    ),
    Claim(
        f"{UNCOVERED} — against transfer, paper protocol (same epochs: fewer fine-tuning steps)",
        (
            Comparison(
                Selection("MF", "coverage", "multi_fidelity", **COVERED),
                Selection("transfer", "coverage", "transfer", **COVERED),
            ),
        ),
    ),
    Claim(
        "(ours, not the paper's) MF with fidelity_sampling 1:1 below single-fidelity on E, F, S, M — equal compute",
        (Comparison(Selection("MF 1:1", "mf_options", "mf_balanced"), LC_SF_EQUAL, max_high=400),),
    ),
    Claim(
        f"(ours) MF with its trainer option chosen on validation frames {OPTIONS_TEXT} below single-fidelity on "
        "E, F, S, M — equal compute, chgnet",
        (Comparison(Selection("MF chosen", "mf_options", CHOSEN), LC_SF_EQUAL, max_high=400),),
    ),
    Claim(
        f"(ours) MF with its trainer option chosen on validation frames {OPTIONS_TEXT} below single-fidelity on "
        "E, F, S, M — equal compute, schnet",
        (Comparison(Selection("MF chosen", "mf_options", CHOSEN, backbone="schnet"), SCHNET_SF_EQUAL, max_high=400),),
    ),
    Claim(
        "(diagnosis) the closer the low fidelity, the better MF: MF's error falls as the low-fidelity labels move "
        "toward the high teacher, y_high + α (y_low − y_high), α = 1 → 0.5 → 0 (same frames, same steps)",
        check=_falls_with_the_gap,
    ),
    Claim(
        "(diagnosis) with the fidelity gap halved (α = 0.5), MF below single-fidelity on E, F, S, M — equal compute",
        (Comparison(Selection("MF at α = 0.5", "fidelity_gap", "multi_fidelity", dataset=GAP[0.5]), GAP_SF),),
    ),
    Claim(
        "(diagnosis) with no gap (α = 0: the low fidelity is the high teacher on other frames), MF below "
        "single-fidelity on E, F, S, M — equal compute; plain, without readout copies, sampling 1:1",
        tuple(
            Comparison(
                Selection(f"{name} at α = 0", "fidelity_gap", method, mechanisms=mechanisms, dataset=GAP[0.0]), GAP_SF
            )
            for method, mechanisms, name in (
                ("multi_fidelity", "ECMR", "MF"),
                ("multi_fidelity", "ECM", "MF without R"),
                ("mf_balanced", "ECMR", "MF 1:1"),
            )
        ),
    ),
    Claim(
        "(diagnosis) the identity start of the fidelity parameters (X_f = 0, W_F = 0, equal readout copies) below a "
        "random start, as a from-scratch implementation would draw them — same steps",
        (
            Comparison(
                Selection("MF, identity start", "mf_options", "multi_fidelity"),
                Selection("MF, drawn at random", "mf_options", "mf_random_init"),
            ),
        ),
    ),
    *(
        Claim(
            f"(option) R as one shared readout plus a residual per fidelity, below both independent copies (F) and no "
            f"R (R̄) — {backbone}, same steps",
            tuple(
                Comparison(
                    Selection("F, shared + residual", experiment, "mf_residual_readout", backbone=backbone),
                    Selection(name, experiment, "multi_fidelity", mechanisms=mechanisms, backbone=backbone),
                )
                for mechanisms, name in (("ECMR", "F, independent copies"), ("ECM", "R̄, one shared readout"))
            ),
        )
        for experiment, backbone in (("ablations", "chgnet"), ("second_backbone", "schnet"))
    ),
)


def check_claims(report: Report) -> list[Verdict]:
    """One verdict per claim of :data:`CLAIMS`, from ``report`` = {experiment: every run's result}."""
    verdicts = []
    for claim in CLAIMS:
        outcomes, lines = claim.check(report) if claim.check else ([], [])
        for comparison in claim.comparisons:
            more, said = _judge(comparison, report)
            outcomes, lines = outcomes + more, lines + said
        verdicts.append(Verdict(claim.text, _status(outcomes), lines))
    return verdicts


def read_report(out: str | Path) -> Report:
    """{experiment: every run's result} from the ``<experiment>.json`` files in ``out`` (a damaged one is
    warned about, naming it, and left out)."""
    report = {}
    for path in sorted(Path(out).glob("*.json")):
        try:
            report[path.stem] = read_runs(path)
        except ValueError as error:
            warn_damaged(path, error, "left out of the claims")
    return report


def claims_document(out: str | Path) -> str:
    """``claims.md`` of a level's report folder ``out``: the seed paper's claims, then the verdicts of the
    foundation experiment (:func:`mfwrap.bench.foundation.claims_markdown`) where ``out/../foundation.json``
    exists."""
    import json

    text = claims_markdown(check_claims(read_report(out)))
    foundation = Path(out).parent / "foundation.json"
    if foundation.is_file():
        from mfwrap.bench.foundation import claims_markdown as foundation_claims

        text += "\n" + foundation_claims(json.loads(foundation.read_text(encoding="utf-8")))
    return text


def claims_markdown(verdicts: list[Verdict]) -> str:
    lines = [
        "### The seed paper's claims on the LMFP set",
        "",
        (
            "Means over the seeds run so far (high-fidelity test MAE); `mfwrap/bench/claims.py` says how each is "
            "checked."
        ),
        "",
    ]
    for verdict in verdicts:
        lines.append(f"- **{verdict.status}** — {verdict.claim}")
        lines += [f"  - {line}" for line in verdict.evidence]
    return "\n".join(lines) + "\n"
