"""Shared test fixtures.  ``record_result`` lines are printed in the terminal summary, so figures
measured by tests (e.g. perplexity after pruning) are visible in the CI log."""

from __future__ import annotations

import pytest

_RESULTS: list[str] = []


@pytest.fixture
def record_result():
    return _RESULTS.append


def pytest_terminal_summary(terminalreporter):
    if _RESULTS:
        terminalreporter.section("recorded results")
        for line in _RESULTS:
            terminalreporter.write_line(line)
