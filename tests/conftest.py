"""Shared fixtures and hooks; the models themselves live in the test zoo (``tests/zoo.py``).

- ``@pytest.mark.shared``: the test reads ``../shared`` (real models and data).  Skipped when
  it is absent -- unless ``DEPPRUNE_REQUIRE_SHARED=1`` (``.ci/run`` sets it), which turns the
  skip into a failure, so CI never passes by skipping the real-weight tests.
- ``traced(arch)`` / ``pruned(arch, kind)`` / ``batch``: every zoo architecture traced once, and
  every (architecture, kind) plan of :func:`zoo.random_plan` executed once, per session.
- ``record_result``: lines printed in the terminal summary, so figures measured by tests
  (e.g. perplexity after pruning) are visible in the CI log.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from depgraph import meta_copy, trace
from depgraph.groups import find_groups
from pruners.slicing.executor import execute

from zoo import ARCHS, NEW_ARCHS, SEQ_SHAPE, SHARED, STORIES, VOCAB, attr_snapshot, random_plan, require_shared

_RESULTS: list[str] = []


def pytest_runtest_setup(item):
    if item.get_closest_marker("shared") is not None:
        require_shared(SHARED)
        require_shared(STORIES)


@pytest.fixture
def record_result():
    return _RESULTS.append


@pytest.fixture(scope="session")
def stories():
    """The real stories260K directory in ../shared (skipped, or failed in CI, when absent)."""
    return require_shared(STORIES)


# -- the zoo's models, each traced once and each plan executed once per session -----------------


@dataclass
class Traced:
    model: nn.Module
    trace: object
    groups: list
    state: dict[str, torch.Tensor]  # snapshot taken before any execute
    attrs: dict  # size-like attributes and config, snapshot


@pytest.fixture(scope="session")
def traced():
    cache: dict[str, Traced] = {}

    def get(arch: str) -> Traced:
        if arch not in cache:
            model = {**ARCHS, **NEW_ARCHS}[arch].build()
            tr = trace(meta_copy(model))
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            cache[arch] = Traced(model, tr, find_groups(tr), state, copy.deepcopy(attr_snapshot(model)))
        return cache[arch]

    return get


@dataclass
class Pruned:
    model: nn.Module
    record: object
    keep: dict[str, list[int]]


@pytest.fixture(scope="session")
def pruned(traced):
    cache: dict[tuple[str, str], Pruned] = {}

    def get(arch: str, kind: str) -> Pruned:
        if (arch, kind) not in cache:
            t = traced(arch)
            keep = random_plan(t.groups, kind)
            model, record = execute(t.model, t.trace, t.groups, keep)
            cache[(arch, kind)] = Pruned(model.eval(), record, keep)
        return cache[(arch, kind)]

    return get


@pytest.fixture(scope="module")
def batch():
    return torch.randint(3, VOCAB, SEQ_SHAPE, generator=torch.Generator().manual_seed(1234))


def pytest_terminal_summary(terminalreporter):
    if _RESULTS:
        terminalreporter.section("recorded results")
        for line in _RESULTS:
            terminalreporter.write_line(line)
