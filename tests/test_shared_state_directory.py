"""Where backends share the key-wide rate state with other processes (``$OPENROUTER_SYNC_SHARED_STATE``),
safely, and the throttles of keys no longer in use are let go."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import pytest

from openrouter_sync import OpenRouterBackend
from openrouter_sync.throttle import SHARED_STATE_ENV, Throttle


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_by_default_nothing_is_shared(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.delenv(SHARED_STATE_ENV, raising=False)
    assert Throttle.for_endpoint("http://127.0.0.1:1/api/v1", key).shared_state is None


def test_a_directory_named_holds_one_private_file_per_endpoint_and_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    monkeypatch.setenv(SHARED_STATE_ENV, str(tmp_path / "state"))
    throttle = Throttle.for_endpoint("http://127.0.0.1:5/api/v1", key)
    where = throttle.shared_state
    assert where is not None and Path(where).parent == tmp_path / "state"
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert key not in where and Throttle.for_endpoint("http://127.0.0.1:5/api/v1", key) is throttle


def test_off_shares_nothing(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv(SHARED_STATE_ENV, "off")
    assert Throttle.for_endpoint("http://127.0.0.1:2/api/v1", key).shared_state is None


@pytest.mark.parametrize("make", ["group-writable", "symlink"])
def test_a_directory_that_is_not_this_users_alone_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture,
        make: str) -> None:
    target = tmp_path / "state"
    target.mkdir()
    if make == "group-writable":
        target.chmod(0o777)
        where = target
    else:  # a link planted where the directory would be
        where = tmp_path / "link"
        where.symlink_to(target, target_is_directory=True)
    monkeypatch.setenv(SHARED_STATE_ENV, str(where))
    with caplog.at_level(logging.WARNING, logger="openrouter_sync"):
        throttle = Throttle.for_endpoint("http://127.0.0.1:3/api/v1", key)
    assert throttle.shared_state is None
    assert "state is not shared" in caplog.text and not list(target.iterdir())


def test_throttles_of_keys_no_longer_in_use_are_released_with_their_files(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SHARED_STATE_ENV, str(tmp_path))
    gc.collect()
    before_fds, before_registry = _open_fds(), len(Throttle._registry)
    for tenant in range(300):
        backend = OpenRouterBackend(base_url="http://127.0.0.1:4/api/v1", api_key=f"sk-or-v1-tenant-{tenant:04d}")
        assert backend.throttle.acquire(lambda s: None, 1.0).admitted and backend.throttle.shared_state
        backend.close()
        del backend
    gc.collect()
    assert len(Throttle._registry) <= before_registry + 1
    assert _open_fds() <= before_fds + 2


@pytest.mark.parametrize("make", ["writable-parent", "foreign-link-above", "foreign-parent"])
def test_a_directory_below_a_folder_or_link_another_user_controls_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture,
        make: str) -> None:
    """A planted parent (a world-writable folder without the sticky bit, another user's folder, or
    another user's link anywhere above) could swap the directory for one of its own later."""
    above = tmp_path / "above"
    above.mkdir()
    if make == "writable-parent":
        above.chmod(0o777)
        where = above / "state"
    elif make == "foreign-link-above":
        if os.getuid() != 0:
            pytest.skip("giving a link to another user needs root")
        link = tmp_path / "link"
        link.symlink_to(above, target_is_directory=True)
        os.lchown(link, 54321, -1)
        where = link / "state"
    else:
        if os.getuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(above, 54321, -1)
        where = above / "state"
    monkeypatch.setenv(SHARED_STATE_ENV, str(where))
    with caplog.at_level(logging.WARNING, logger="openrouter_sync"):
        throttle = Throttle.for_endpoint("http://127.0.0.1:6/api/v1", key)
    assert throttle.shared_state is None and "state is not shared" in caplog.text


def test_a_sticky_shared_folder_above_is_fine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp is: anyone may add, no one may swap another's entry
    monkeypatch.setenv(SHARED_STATE_ENV, str(shared / "state"))
    assert Throttle.for_endpoint("http://127.0.0.1:7/api/v1", key).shared_state is not None
