"""``depprune prune`` end to end for every registered importance estimator x every aggregation.

The combinations are read from the registries (plugins included) when the module is collected,
so a newly registered estimator or aggregation is covered without editing this file.  Every run
goes through the CLI entry point in-process, with a tiny calibration set (2 windows of 16 tokens
of ``../shared/data``), and is checked for: exit code 0, a JSON report naming the estimator and
the aggregation, a saved model that loads with fewer parameters (close to the requested ratio)
and finite logits, and a saved record that agrees with the report.  A last test checks that the
estimator, the aggregation and the seed really change the plan.

Speed.  The model is a random-weight, 1-layer copy of ``../shared/models/stories260K``'s
architecture (its tokenizer too): the 5-layer original costs about 7 s a run on CPU, mostly in
three ``torch.export`` traces (the source, then pruned candidates checked by re-tracing).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from pruners.cli import main
from pruners.importance import AGGREGATIONS, ESTIMATORS, load_plugins
from pruners.io.checkpoint import load_model
from pruners.pipeline import count_params

from zoo import SHARED, STORIES

CALIBRATION = SHARED / "data" / "tinystories-valid" / "TinyStories-valid.first46.txt"

pytestmark = pytest.mark.shared

load_plugins()  # the CLI loads plugins too: their names must be part of the matrix
ESTIMATOR_NAMES = sorted(ESTIMATORS)
AGGREGATION_NAMES = sorted(AGGREGATIONS)
COMBINATIONS = [(imp, agg) for imp in ESTIMATOR_NAMES for agg in AGGREGATION_NAMES]
BUILTIN_ESTIMATORS = {
    "random", "l1", "l2", "taylor-vector", "taylor-element", "taylor-second", "taylor-mix", "wanda-sp", "flap"
}
BUILTIN_AGGREGATIONS = {"sum", "mean", "max", "prod", "last"}
RATIO = 0.2
RATIO_TOLERANCE = 0.05  # achieved fraction of parameters removed, vs the requested one
PROBE = torch.tensor([[1, 403, 261, 87, 299, 9, 414, 30, 11, 2]])  # token ids < 512 (stories260K vocab)


# --------------------------------------------------------------------------- environment


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads; on a busy CPU they cost 5x
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")  # tests never reach the network
            yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """stories260K's architecture with 1 layer and random weights, saved as a plain HF model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(STORIES)
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = tmp_path_factory.mktemp("source")
    model.save_pretrained(path)
    return path


class Runs:
    """``depprune prune`` runs, made on first request and shared by the tests of this module."""

    def __init__(self, model: Path, root: Path):
        self.model = model
        self.root = root
        self.done: dict[tuple, dict] = {}

    def __call__(self, importance: str, aggregation: str, seed: int = 0, repeat: int = 0) -> dict:
        key = (importance, aggregation, seed, repeat)
        if key not in self.done:
            out = self.root / f"{importance}-{aggregation}-seed{seed}-{repeat}"
            argv = [
                "prune", "--model", str(self.model), "--tokenizer", str(STORIES), "--ratio", str(RATIO),
                "--importance", importance, "--aggregation", aggregation, "--seed", str(seed),
                "--calibration", str(CALIBRATION), "--calibration-samples", "2", "--calibration-seq-len", "16",
                "--out", str(out), "--json", "--quiet",
            ]
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(argv)
            self.done[key] = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "out": out}
        return self.done[key]

    def kept(self, *key, **options) -> dict[str, list[int]]:
        """The kept units per group id, from the saved model's depprune record."""
        run = self(*key, **options)
        assert run["code"] == 0, run["stderr"]
        return json.loads((run["out"] / "config.json").read_text())["depprune"]["record"]["kept"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, source) -> Runs:
    return Runs(source, tmp_path_factory.mktemp("cli-combinations"))


@pytest.fixture(scope="module")
def source_params(source) -> int:
    return count_params(load_model(source))


# --------------------------------------------------------------------------- tests


def test_matrix_covers_every_registered_name():
    assert BUILTIN_ESTIMATORS <= set(ESTIMATOR_NAMES)
    assert BUILTIN_AGGREGATIONS <= set(AGGREGATION_NAMES)
    assert len(COMBINATIONS) == len(ESTIMATOR_NAMES) * len(AGGREGATION_NAMES) >= 45


@pytest.mark.slow
@pytest.mark.parametrize(("importance", "aggregation"), COMBINATIONS, ids=[f"{i}-{a}" for i, a in COMBINATIONS])
def test_prune_every_estimator_and_aggregation(importance, aggregation, runs, source_params):
    run = runs(importance, aggregation)
    assert run["code"] == 0, run["stderr"]
    report = json.loads(run["stdout"])  # --json --quiet: stdout is exactly one JSON object

    # the report names what was run
    assert report["importance"] == importance and report["aggregation"] == aggregation
    assert report["calibration"] == str(CALIBRATION) and report["out"] == str(run["out"])
    assert report["ratio_target"] == RATIO
    assert report["params_before"] == source_params
    assert report["params_after"] < report["params_before"]
    assert abs(report["ratio_achieved"] - RATIO) <= RATIO_TOLERANCE, report
    assert math.isclose(report["ratio_achieved"], 1 - report["params_after"] / report["params_before"], abs_tol=1e-5)

    # the saved model loads, is as small as reported, and computes finite logits
    pruned = load_model(run["out"])
    assert count_params(pruned) == report["params_after"] < source_params
    with torch.no_grad():
        logits = pruned(PROBE).logits
    assert logits.shape == (1, PROBE.shape[1], pruned.config.vocab_size)
    assert torch.isfinite(logits).all(), f"{importance}/{aggregation}: non-finite logits"

    # the saved record agrees with the report: per kind, kept units = units - removed units
    saved = json.loads((run["out"] / "config.json").read_text())["depprune"]
    assert saved["run"]["config"]["importance"] == importance and saved["run"]["config"]["aggregation"] == aggregation
    kept = saved["record"]["kept"]
    assert report["removed"], report
    for kind, stats in report["removed"].items():
        groups = {gid: units for gid, units in kept.items() if gid.split("@")[0] == kind}
        assert groups, f"no {kind} group in the saved record"
        assert sum(len(u) for u in groups.values()) == stats["units"] - stats["removed_units"] > 0
        for units in groups.values():
            assert units == sorted(set(units)) and units[0] >= 0


@pytest.mark.slow
def test_estimators_aggregations_and_seeds_change_the_plan(runs):
    # random is seeded: the same seed gives the same plan, another seed another plan
    assert runs.kept("random", "sum", 0) == runs.kept("random", "sum", 0, repeat=1)
    assert runs.kept("random", "sum", 0) != runs.kept("random", "sum", 1)
    # the scores are used: magnitude, random, gradient and activation criteria disagree on
    # which 64 of the 172 MLP channels to drop (taylor-mix is left out: with 2 calibration
    # windows its second-order term is too small to change taylor-element's ranking)
    assert runs.kept("l2", "sum") != runs.kept("random", "sum")
    assert runs.kept("l1", "sum") != runs.kept("taylor-element", "sum")
    assert runs.kept("taylor-vector", "sum") != runs.kept("taylor-element", "sum")
    assert runs.kept("wanda-sp", "sum") != runs.kept("l2", "sum")
    assert runs.kept("flap", "sum") != runs.kept("wanda-sp", "sum")
    # the aggregation is used: an MLP channel's members (gate row, up row, down column) rank
    # the channels differently by magnitude
    assert runs.kept("l2", "sum") != runs.kept("l2", "last")
    assert runs.kept("l2", "sum") != runs.kept("l2", "max")
    # activation criteria score only the input-side member: the others are left out of the
    # aggregation, so prod is that member's score too (not a product with an empty row)
    assert runs.kept("wanda-sp", "prod") == runs.kept("wanda-sp", "sum")
    assert runs.kept("flap", "prod") != runs.kept("wanda-sp", "prod")
    # and the matrix is not a handful of plans: more distinct plans than estimators
    plans = {json.dumps(runs.kept(imp, agg), sort_keys=True) for imp, agg in COMBINATIONS}
    assert len(plans) > len(ESTIMATOR_NAMES), f"{len(plans)} distinct plans over {len(COMBINATIONS)} runs"
