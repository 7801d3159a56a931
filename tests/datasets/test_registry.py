"""The dataset registry: the suite's splits are pinned frame by frame, and the split rule's options
are checked with one clear line each."""

from __future__ import annotations

import hashlib

import pytest

from mfwrap.bench import runner
from mfwrap.bench.grid import LEVELS, RunSpec
from mfwrap.datasets.registry import DATASETS, Split, get_dataset, mn_fraction


@pytest.fixture(scope="module", autouse=True)
def lmfp_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MFWRAP_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def fingerprint(records) -> str:
    """The frames in order: each one's file and frame number, fidelity and energy label."""
    text = "\n".join(f"{r.name}|{r.fidelity}|{r.labels['energy']:.9e}" for r in records)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# The committed suite results (benchmarks/results/suite) were trained on these exact frames, as
# runner.make_splits chose them before the registry existed (recorded on that code): a change to the
# split rule would make a rerun train on other data than the results it restores or extends.
PINNED = [
    (
        "quick",
        RunSpec("x", "multi_fidelity", 10, None, "paper", 0),
        {
            "train_high": (10, "a8cc03a038c7"),
            "train_low": (40, "cafb7e475c26"),
            "val": (5, "060f7a819af3"),
            "test": (50, "24b1c68186c1"),
        },
    ),
    (
        "quick",
        RunSpec("x", "multi_fidelity", 25, 20, "paper", 1),
        {
            "train_high": (25, "a3cef80285c4"),
            "train_low": (20, "c7edfcf2e71f"),
            "val": (5, "1bbb8eedadd3"),
            "test": (50, "24b1c68186c1"),
        },
    ),
    (
        "medium",
        RunSpec("x", "multi_fidelity", 90, None, "paper", 2),
        {
            "train_high": (90, "88aa647b2c81"),
            "train_low": (300, "be58fe02bff5"),
            "val": (10, "20993dff44a4"),
            "test": (50, "24b1c68186c1"),
        },
    ),
    (
        "medium",
        RunSpec("x", "single_fidelity", 25, None, "equal_compute", 0),
        {
            "train_high": (25, "e99d356b5556"),
            "train_low": (300, "590dfe7b4b36"),
            "val": (10, "9f41062b185d"),
            "test": (50, "24b1c68186c1"),
        },
    ),
    (
        "medium",
        RunSpec("x", "multi_fidelity", None, None, "paper", 1, region="mn_le_half"),
        {
            "train_high": (41, "39369f3cd7a5"),
            "train_low": (300, "e215320a12da"),
            "val": (10, "7848b8bdac2d"),
            "test": (16, "64b5a33cac80"),
        },
    ),
    (
        "quick",
        RunSpec("x", "transfer", None, None, "paper", 0, region="mn_le_half"),
        {
            "train_high": (46, "ab191312fb4d"),
            "train_low": (40, "cafb7e475c26"),
            "val": (5, "020b9b0c2618"),
            "test": (16, "64b5a33cac80"),
        },
    ),
    (
        "medium",
        RunSpec("x", "multi_fidelity", 25, None, "paper", 0, dataset="lmfp-gap50"),
        {
            "train_high": (25, "e99d356b5556"),
            "train_low": (300, "872165e98f85"),
            "val": (10, "9f41062b185d"),
            "test": (50, "24b1c68186c1"),
        },
    ),
    (
        "quick",
        RunSpec("x", "multi_fidelity", 10, None, "paper", 0, dataset="li3ps4"),
        {
            "train_high": (10, "fd9ab3aaf677"),
            "train_low": (40, "eacd7838b7d1"),
            "val": (10, "1c03be6ea0ba"),
            "test": (10, "e34add6c3c31"),
        },
    ),
    (
        "medium",
        RunSpec("x", "delta_labels", 80, None, "paper", 2, dataset="li3ps4"),
        {
            "train_high": (80, "0119faa5c8e5"),
            "train_low": (80, "9726b0fcc05a"),
            "val": (10, "1c03be6ea0ba"),
            "test": (10, "e34add6c3c31"),
        },
    ),
    (
        "medium",
        RunSpec("x", "multi_fidelity", 5, 40, "paper", 1, dataset="li3ps4"),
        {
            "train_high": (5, "b2b4aa72f784"),
            "train_low": (40, "0a61d0431fa3"),
            "val": (10, "1c03be6ea0ba"),
            "test": (10, "e34add6c3c31"),
        },
    ),
]


@pytest.mark.parametrize("level, spec, expected", PINNED, ids=lambda x: getattr(x, "dataset", None))
def test_the_suite_splits_the_frames_its_committed_results_were_trained_on(level, spec, expected):
    splits = runner.make_splits(spec, LEVELS[level])
    assert {split: (len(getattr(splits, split)), fingerprint(getattr(splits, split))) for split in expected} == expected


def test_the_split_rule_pairs_li3ps4_and_keeps_a_region_apart():
    li3ps4 = DATASETS["li3ps4"].split(Split(seed=3, n_high=7))
    assert [r.name for r in li3ps4.train_high] == [r.name for r in li3ps4.train_low[:7]]  # the same structures
    assert {r.fidelity for r in li3ps4.train_high} == {"r2scan"}
    assert {r.fidelity for r in li3ps4.train_low} == {"pbesol"}
    region = DATASETS["lmfp"].split(Split(seed=1, n_val=4, region="mn_le_half"))
    assert all(mn_fraction(r) <= 0.5 for r in region.train_high + region.val)
    assert region.test and all(mn_fraction(r) > 0.5 for r in region.test)
    everything = DATASETS["lmfp"].split(Split(seed=1))
    assert everything.val == [] and len(everything.train_high) == 100 and len(everything.train_low) == 300
    assert {r.name for r in everything.train_high} == {f"high_train.xyz: frame {i}" for i in range(100)}


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("li3ps4", Split(n_val=5), "dataset 'li3ps4' ships its validation frames; leave n_val out"),
        ("li3ps4", Split(size="small"), r"dataset 'li3ps4' has no size 'small'; sizes: none: it has one size"),
        ("lmfp", Split(size="huge"), r"dataset 'lmfp' has no size 'huge'; sizes: one of \['small', 'full', 'tiny'\]"),
        ("lmfp", Split(region="north"), r"dataset 'lmfp' has no region 'north'; regions: \['mn_le_half'\]"),
        ("lmfp", Split(n_high=99, n_val=2), "99 high-fidelity training frames requested, 98 exist"),
        ("lmfp", Split(n_low=301), "301 low-fidelity training frames requested, 300 exist"),
    ],
)
def test_bad_split_options_are_one_clear_error(name, options, message):
    with pytest.raises(ValueError, match=message):
        DATASETS[name].split(options)


def test_names_and_families():
    assert get_dataset("lmfp-gap50").family == "lmfp" and get_dataset("lmfp").family == "lmfp"
    assert get_dataset("li3ps4").fidelities == ("pbesol", "r2scan") and get_dataset("li3ps4").targets == "ef"
    assert runner.fidelities_of("lmfp-gap0") == ["low", "high"] and runner.targets_of("lmfp") == "efsm"
    with pytest.raises(ValueError, match=r"unknown dataset 'qm9'; known are \['li3ps4', 'lmfp', 'lmfp-gap0'"):
        get_dataset("qm9")
