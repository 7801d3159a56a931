"""The seed paper's claims, one by one, checked against the suite's aggregated results.

:func:`check_claims` reads every run's result (the "runs" of each ``<experiment>.json`` that
``mfwrap bench report`` writes) and returns one :class:`Verdict` per claim: "holds" (every
comparison goes the claimed way), "fails" (none does), "partly", or "not measured" (the runs are
missing). Each comparison is between means of the high-fidelity test MAE over the seeds *both*
sides have, and names them, with how many of those seeds (each its own data subsets and
initialisation, the same for both sides) go the way of the means; with one seed a difference of a
few per cent is within the noise between seeds. (The noise floor of one run: the same five medium runs —
same splits, seeds and steps — on a GPU and on the CPU differ in test MAE by up to 13 % on energy,
15 % on magmoms, 5 % on forces and 7 % on stress, float summation order alone;
``benchmarks/results/suite_gpu.json``.) ``mfwrap bench report`` writes the verdicts to ``claims.md``.

Comparisons, all on the LMFP set with the CHGNet backbone unless said:

1. MF below single-fidelity for N_high ≤ 400 on E, F, S, M — under each protocol: paper (same
   epochs), equal compute (single-fidelity gets MF's steps), converged.
2. Target: MF force MAE ≥ 20 % below single-fidelity's at N_high ≤ 100 under the paper protocol,
   and MF still ahead (forces) under the converged protocol.
3. More low-fidelity data lowers the error (each N_high: MAE at the most low-fidelity frames below
   the MAE at the fewest, per target).
4. F (all four mechanisms) best among the ablations, per target (and with SchNet, ``second_backbone``).
5. MF ahead of transfer learning on F, S, M (judged apart: paper protocol; transfer at MF's steps).

Claim 1 again with SchNet (the ``second_backbone`` experiment; paper protocol and equal compute);
SevenNet-MF's coverage argument: MF ahead where the high fidelity has no frames (the ``coverage``
experiment; against single-fidelity at MF's steps and against transfer); and two of ours, from the
``mf_options`` experiment, against single-fidelity at equal compute: MF with ``fidelity_sampling``
1:1, and MF with its trainer option *chosen on the validation frames* (plain, 1:1 sampling or the
high fidelity reweighted — the options that cost no extra steps), per backbone, N_high and seed, by
the paper's weighted validation MAE Σ_t w_t MAE_t (w = 1, 1, 0.1, 0.1 in eV/atom, eV/Å, GPa, μB).
The second is how a user would pick an option; the test set never enters the choice. And the
diagnosis of the equal-compute results (the ``fidelity_gap`` experiment): MF's error against the size
of the fidelity gap α (:mod:`mfwrap.datasets.lmfp_gap`), and MF at half the gap against single-fidelity.
Last, an option of ours in the ablations grids: R as one shared readout plus a zero-started residual
per fidelity (``mf_residual_readout``) against F's independent copies and against R̄ (no R).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

TARGETS = ("energy", "forces", "stress", "magmoms")
# the seed paper's loss weights over the reported units (meV/atom, meV/Å, GPa, μB) → the weighted validation MAE in eV units
SELECTION_WEIGHTS = {"energy": 1e-3, "forces": 1e-3, "stress": 0.1, "magmoms": 0.1}
SAME_STEP_OPTIONS = ("multi_fidelity", "mf_balanced", "mf_reweighted")  # MF variants at MF's steps (warm start pre-trains)
SHORT = {"energy": "E", "forces": "F", "stress": "S", "magmoms": "M"}


@dataclass
class Verdict:
    """One claim: its status and the comparisons behind it (one line each)."""

    claim: str
    status: str
    evidence: list[str] = field(default_factory=list)


Runs = dict  # {N_high: {seed: {target: MAE}}}


def _select(runs: list[dict], method: str, protocol: str, mechanisms: str | None = "ECMR", region: str | None = None,
            backbone: str = "chgnet", dataset: str = "lmfp") -> Runs:
    """{N_high: {seed: high-fidelity test MAE per target}} of one method under one protocol (``dataset``,
    ``backbone``, high-fidelity frames from ``region``; None: the whole set)."""
    found: Runs = {}
    for run in runs:
        spec = run["spec"]
        if (spec["method"] == method and spec["protocol"] == protocol and spec["dataset"] == dataset
                and spec["backbone"] == backbone and spec.get("region") == region
                and (mechanisms is None or spec["mechanisms"] == mechanisms)):
            found.setdefault(run["n_train"]["high"], {})[spec["seed"]] = _test_mae(run)
    return found


def _test_mae(run: dict) -> dict[str, float]:
    """A run's high-fidelity test MAE per target."""
    return {t: v["mae"] for t, v in run["test"][run["target_fidelity"]].items()}


def _validation_score(run: dict) -> float:
    """A run's weighted validation MAE (:data:`SELECTION_WEIGHTS`), the same for every MF option."""
    val = run["val"][run["target_fidelity"]]
    return sum(w * val[t]["mae"] for t, w in SELECTION_WEIGHTS.items() if t in val)


def _chosen_on_validation(runs: list[dict], methods=SAME_STEP_OPTIONS, backbone: str = "chgnet") -> tuple[Runs, dict]:
    """Per (N_high, seed), the test MAEs of the MF (ECMR) variant among ``methods`` with the lowest weighted
    validation MAE (:data:`SELECTION_WEIGHTS`), and {N_high: {seed: chosen method}}. A (N_high, seed) is left
    out until every variant has finished, so that a choice never changes by a run arriving later."""
    candidates: dict[int, dict[int, dict[str, dict]]] = {}
    for run in runs:
        spec = run["spec"]
        if (spec["method"] in methods and spec["protocol"] == "paper" and spec["dataset"] == "lmfp"
                and spec["backbone"] == backbone and spec.get("region") is None and spec["mechanisms"] == "ECMR"):
            candidates.setdefault(run["n_train"]["high"], {}).setdefault(spec["seed"], {})[spec["method"]] = run
    found: Runs = {}
    chosen: dict[int, dict[int, str]] = {}
    for n, by_seed in candidates.items():
        for seed, by_method in by_seed.items():
            if set(by_method) != set(methods):
                continue
            method = min(sorted(by_method), key=lambda m: _validation_score(by_method[m]))
            found.setdefault(n, {})[seed] = _test_mae(by_method[method])
            chosen.setdefault(n, {})[seed] = method
    return found, chosen


def _status(outcomes: list[bool]) -> str:
    if not outcomes:
        return "not measured"
    return "holds" if all(outcomes) else "fails" if not any(outcomes) else "partly"


def _mean(by_seed: dict[int, dict], seeds: list[int], target: str) -> float:
    return sum(by_seed[s][target] for s in seeds) / len(seeds)


def _compare(ours: Runs, theirs: Runs, targets, names, max_high: float = math.inf,
             factor: float = 1.0) -> tuple[list[bool], list[str]]:
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
                agree = f", {paired if better else len(seeds) - paired}/{len(seeds)} seeds agree" if len(seeds) > 1 else ""
                lines.append(f"N_high {n}, {SHORT[target]}: {names[0]} {a:.3g} vs {names[1]} {b:.3g} "
                             f"({100 * (a / b - 1):+.0f} %) {'✓' if better else '✗'} (seeds {seeds}{agree})")
    return outcomes, lines


def _by_low(runs: list[dict]) -> dict[int, dict[float, dict]]:
    """{N_high: {N_low: {seed: MAE per target}}} of the MF (ECMR) runs of the low-fidelity-size experiment."""
    found: dict[int, dict[float, dict]] = {}
    for run in runs:
        spec = run["spec"]
        if spec["method"] == "multi_fidelity" and spec["mechanisms"] == "ECMR" and spec["protocol"] == "paper":
            found.setdefault(run["n_train"]["high"], {}).setdefault(run["n_train"]["low"], {})[spec["seed"]] = _test_mae(run)
    return found


def _ablation_verdict(runs: list[dict], backbone: str) -> tuple[str, list[str]]:
    """Claim 4 on ``runs`` of one backbone: per N_high with ablation variants and target, is F (ECMR)
    the lowest mean over the seeds every variant has (ties go to F)?"""
    variants = {m: _select(runs, "multi_fidelity", "paper", mechanisms=m, backbone=backbone) for m in
                {r["spec"]["mechanisms"] for r in runs if r["spec"]["backbone"] == backbone}}
    outcomes, lines = [], []
    if "ECMR" in variants and len(variants) > 1:
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
                agree = f", {f_ahead if best == 'ECMR' else len(seeds) - f_ahead}/{len(seeds)} seeds agree" if len(seeds) > 1 else ""
                margin = 100 * (means["ECMR"] / means[rival] - 1)
                lines.append(f"N_high {n}, {SHORT[target]}: F {means['ECMR']:.3g}; "
                             + (f"next {rival or 'none'} {means[rival]:.3g}" if best == "ECMR" else f"best {best or 'none'} {means[best]:.3g}")
                             + f" (F {margin:+.0f} %) {'✓' if best == 'ECMR' else '✗'} (seeds {seeds}{agree})")
    return _status(outcomes), lines


def check_claims(report: dict[str, list[dict]]) -> list[Verdict]:
    """Verdicts from ``report`` = {experiment: every run's result (``<experiment>.json`` "runs")}."""
    curve = report.get("learning_curve", [])
    verdicts = []
    for protocol, sf_protocol, label in (("paper", "paper", "paper protocol (same epochs)"),
                                         ("paper", "equal_compute", "equal compute (same optimiser steps)"),
                                         ("converged", "converged", "converged protocol")):
        outcomes, lines = _compare(_select(curve, "multi_fidelity", protocol), _select(curve, "single_fidelity", sf_protocol),
                                   TARGETS, ("MF", "SF"), max_high=400)
        verdicts.append(Verdict(f"MF below single-fidelity for N_high ≤ 400 on E, F, S, M — {label}",
                                _status(outcomes), lines))
    outcomes, lines = _compare(_select(curve, "multi_fidelity", "paper"), _select(curve, "single_fidelity", "paper"),
                               ("forces",), ("MF", "0.8 × SF"), max_high=100, factor=0.8)
    verdicts.append(Verdict("target: MF force MAE ≥ 20 % below single-fidelity's at N_high ≤ 100 (paper protocol)",
                            _status(outcomes), lines))
    outcomes, lines = _compare(_select(curve, "multi_fidelity", "converged"), _select(curve, "single_fidelity", "converged"),
                               ("forces",), ("MF", "SF"), max_high=100)
    verdicts.append(Verdict("target: MF still ahead on forces under the converged protocol", _status(outcomes), lines))

    outcomes, lines = [], []
    for n, by_low in sorted(_by_low(report.get("low_fidelity_size", [])).items()):
        if len(by_low) < 2:
            continue
        fewest, most = min(by_low), max(by_low)
        seeds = sorted(set(by_low[fewest]) & set(by_low[most]))
        for target in TARGETS:
            if seeds and all(target in by_low[fewest][s] and target in by_low[most][s] for s in seeds):
                a, b = _mean(by_low[most], seeds, target), _mean(by_low[fewest], seeds, target)
                outcomes.append(a < b)
                lines.append(f"N_high {n}, {SHORT[target]}: {most} low-fidelity frames {a:.3g} vs {fewest}: {b:.3g} "
                             f"{'✓' if a < b else '✗'} (seeds {seeds})")
    verdicts.append(Verdict("more low-fidelity data lowers the error — paper protocol (same epochs, so more low-fidelity "
                            "frames also means more optimiser steps; N_low = all against none at equal steps is the "
                            "equal-compute comparison of MF with single-fidelity above)", _status(outcomes), lines))

    status, lines = _ablation_verdict(report.get("ablations", []), "chgnet")
    verdicts.append(Verdict("F (all four mechanisms) best among the ablations", status, lines))
    status, lines = _ablation_verdict(report.get("second_backbone", []), "schnet")
    verdicts.append(Verdict("F (all four mechanisms) best among the ablations — the second backbone (SchNet)", status, lines))

    compared = report.get("transfer_delta", [])
    for protocol, label, title in (
            ("paper", "transfer, same epochs", "paper protocol (same epochs: transfer fine-tunes for fewer steps)"),
            ("equal_compute", "transfer at MF's steps",
             "equal compute (transfer fine-tunes for MF's steps, its low-fidelity pre-training on top)")):
        outcomes, lines = _compare(_select(compared, "multi_fidelity", "paper"), _select(compared, "transfer", protocol),
                                   ("forces", "stress", "magmoms"), ("MF", label))
        verdicts.append(Verdict(f"MF ahead of transfer learning on F, S, M — {title}", _status(outcomes), lines))

    second = report.get("second_backbone", [])
    for sf_protocol, title in (("paper", "paper protocol (same epochs)"), ("equal_compute", "equal compute (same optimiser steps)")):
        outcomes, lines = _compare(_select(second, "multi_fidelity", "paper", backbone="schnet"),
                                   _select(second, "single_fidelity", sf_protocol, backbone="schnet"), TARGETS, ("MF", "SF"))
        verdicts.append(Verdict(f"the second backbone (SchNet): MF below single-fidelity — {title}", _status(outcomes), lines))

    covered = report.get("coverage", [])
    for method, protocol, name, title in (
            ("single_fidelity", "equal_compute", "SF", "single-fidelity at MF's steps"),
            ("transfer", "paper", "transfer", "transfer, paper protocol (same epochs: fewer fine-tuning steps)")):
        outcomes, lines = _compare(_select(covered, "multi_fidelity", "paper", region="mn_le_half"),
                                   _select(covered, method, protocol, region="mn_le_half"), TARGETS, ("MF", name))
        verdicts.append(Verdict(f"(SevenNet-MF's) MF ahead where the high fidelity has no frames (trained on Mn ≤ 0.5, "
                                f"tested on Mn > 0.5) — against {title}", _status(outcomes), lines))

    outcomes, lines = _compare(_select(report.get("mf_options", []), "mf_balanced", "paper"),
                               _select(curve, "single_fidelity", "equal_compute"), TARGETS, ("MF 1:1", "SF"), max_high=400)
    verdicts.append(Verdict("(ours, not the paper's) MF with fidelity_sampling 1:1 below single-fidelity on E, F, S, M — "
                            "equal compute", _status(outcomes), lines))

    for backbone, single in (("chgnet", _select(curve, "single_fidelity", "equal_compute")),
                             ("schnet", _select(second, "single_fidelity", "equal_compute", backbone="schnet"))):
        ours, chosen = _chosen_on_validation(report.get("mf_options", []), backbone=backbone)
        outcomes, lines = _compare(ours, single, TARGETS, ("MF chosen", "SF"), max_high=400)
        lines += [f"N_high {n}: chosen on validation " + ", ".join(f"seed {s} {c}" for s, c in sorted(chosen[n].items()))
                  for n in sorted(chosen)]
        verdicts.append(Verdict(f"(ours) MF with its trainer option chosen on validation frames (plain, 1:1 sampling, "
                                f"reweighted) below single-fidelity on E, F, S, M — equal compute, {backbone}",
                                _status(outcomes), lines))

    gap = report.get("fidelity_gap", [])
    by_alpha = {alpha: _select(gap, "multi_fidelity", "paper", dataset=dataset)
                for alpha, dataset in ((1.0, "lmfp"), (0.5, "lmfp-gap50"), (0.0, "lmfp-gap0"))}
    single = _select(gap, "single_fidelity", "equal_compute")
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
            sf = f"; SF at MF's steps {_mean(single[n], sf_seeds, target):.3g}" if sf_seeds and target in single[n][sf_seeds[0]] else ""
            lines.append(f"N_high {n}, {SHORT[target]}: MF at α = 1 / 0.5 / 0: {errors[1.0]:.3g} / {errors[0.5]:.3g} / "
                         f"{errors[0.0]:.3g}{sf} {'✓' if falls else '✗'} (seeds {seeds})")
    verdicts.append(Verdict("(diagnosis) the closer the low fidelity, the better MF: MF's error falls as the low-fidelity "
                            "labels move toward the high teacher, y_high + α (y_low − y_high), α = 1 → 0.5 → 0 (same "
                            "frames, same steps)", _status(outcomes), lines))
    outcomes, lines = _compare(by_alpha[0.5], single, TARGETS, ("MF at α = 0.5", "SF"))
    verdicts.append(Verdict("(diagnosis) with the fidelity gap halved (α = 0.5), MF below single-fidelity on E, F, S, M — "
                            "equal compute", _status(outcomes), lines))
    outcomes, lines = [], []
    for method, mechanisms, name in (("multi_fidelity", "ECMR", "MF"), ("multi_fidelity", "ECM", "MF without R"),
                                     ("mf_balanced", "ECMR", "MF 1:1")):
        more, said = _compare(_select(gap, method, "paper", mechanisms=mechanisms, dataset="lmfp-gap0"), single, TARGETS,
                              (f"{name} at α = 0", "SF"))
        outcomes, lines = outcomes + more, lines + said
    verdicts.append(Verdict("(diagnosis) with no gap (α = 0: the low fidelity is the high teacher on other frames), MF below "
                            "single-fidelity on E, F, S, M — equal compute; plain, without readout copies, sampling 1:1",
                            _status(outcomes), lines))
    options = report.get("mf_options", [])
    outcomes, lines = _compare(_select(options, "multi_fidelity", "paper"), _select(options, "mf_random_init", "paper"),
                               TARGETS, ("MF, identity start", "MF, drawn at random"))
    verdicts.append(Verdict("(diagnosis) the identity start of the fidelity parameters (X_f = 0, W_F = 0, equal readout "
                            "copies) below a random start, as a from-scratch implementation would draw them — same steps",
                            _status(outcomes), lines))
    for experiment, backbone in (("ablations", "chgnet"), ("second_backbone", "schnet")):
        runs = report.get(experiment, [])
        residual = _select(runs, "mf_residual_readout", "paper", backbone=backbone)
        outcomes, lines = [], []
        for mechanisms, name in (("ECMR", "F, independent copies"), ("ECM", "R̄, one shared readout")):
            more, said = _compare(residual, _select(runs, "multi_fidelity", "paper", mechanisms=mechanisms, backbone=backbone),
                                  TARGETS, ("F, shared + residual", name))
            outcomes, lines = outcomes + more, lines + said
        verdicts.append(Verdict(f"(option) R as one shared readout plus a residual per fidelity, below both independent "
                                f"copies (F) and no R (R̄) — {backbone}, same steps", _status(outcomes), lines))
    return verdicts


def read_report(out: str | Path) -> dict[str, list[dict]]:
    """{experiment: every run's result} from the ``<experiment>.json`` files in ``out``."""
    return {path.stem: json.loads(path.read_text())["runs"] for path in sorted(Path(out).glob("*.json"))}


def claims_markdown(verdicts: list[Verdict]) -> str:
    lines = ["### The seed paper's claims on the LMFP set", "",
             "Means over the seeds run so far (high-fidelity test MAE); `mfwrap/bench/claims.py` says how each is checked.",
             ""]
    for verdict in verdicts:
        lines.append(f"- **{verdict.status}** — {verdict.claim}")
        lines += [f"  - {line}" for line in verdict.evidence]
    return "\n".join(lines) + "\n"
