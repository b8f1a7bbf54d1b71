"""Shared fixtures and hooks; the models themselves live in the test zoo (``tests/zoo.py``).

- ``@pytest.mark.shared``: the test reads ``../shared`` (real models and data).  Skipped when
  it is absent -- unless ``DEPPRUNE_REQUIRE_SHARED=1`` (``.ci/run`` sets it), which turns the
  skip into a failure, so CI never passes by skipping the real-weight tests.
- ``record_result``: lines printed in the terminal summary, so figures measured by tests
  (e.g. perplexity after pruning) are visible in the CI log.
"""

from __future__ import annotations

import pytest

from zoo import SHARED, STORIES, require_shared

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


def pytest_terminal_summary(terminalreporter):
    if _RESULTS:
        terminalreporter.section("recorded results")
        for line in _RESULTS:
            terminalreporter.write_line(line)
