"""The zoo's own promises: a missing ../shared skips a test locally and fails it in CI."""

from __future__ import annotations

import pytest

from zoo import REQUIRE_SHARED, STORIES, require_shared


def test_missing_shared_skips_locally(tmp_path, monkeypatch):
    monkeypatch.delenv(REQUIRE_SHARED, raising=False)
    with pytest.raises(pytest.skip.Exception, match="is not present"):
        require_shared(tmp_path / "absent")


def test_missing_shared_fails_in_ci(tmp_path, monkeypatch):
    monkeypatch.setenv(REQUIRE_SHARED, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_SHARED}=1 requires it"):
        require_shared(tmp_path / "absent")


@pytest.mark.shared
def test_present_shared_is_returned():
    assert require_shared(STORIES) == STORIES and (STORIES / "config.json").is_file()
