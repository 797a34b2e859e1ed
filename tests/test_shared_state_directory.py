"""Where backends share the key-wide rate state with other processes (``$OPENROUTER_SYNC_SHARED_STATE``),
safely, and the throttles of keys no longer in use are let go."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from openrouter_sync import OpenRouterBackend
from openrouter_sync import throttle as throttle_module
from openrouter_sync.throttle import SHARED_STATE_ENV, STANDBY_LOOK, Throttle, Ticket


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rate_limited(throttle: Throttle) -> None:
    throttle.on_rate_limited(Ticket(time.monotonic(), 0.0), None)


def _second_process(url: str, key: str, step: str, tmp_path: Path) -> str:
    """Another process on ``url`` and ``key`` does ``step`` (``t`` is its throttle): where it shares."""
    code = ("import sys, time; from openrouter_sync.throttle import Throttle, Ticket; "
            f"t = Throttle.for_endpoint(sys.argv[1], sys.argv[2]); {step}; print(t.shared_state)")
    done = subprocess.run([sys.executable, "-c", code, url, key], capture_output=True, text=True, timeout=60)
    where = done.stdout.strip()
    assert done.returncode == 0 and Path(where).parent == tmp_path / "openrouter-sync", done.stderr
    return where


def test_by_default_a_process_alone_on_its_key_shares_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    """Its 429s are noted in a private file of the runtime directory (no key in it); its calls go
    on as if nothing were shared."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    throttle = Throttle.for_endpoint("http://127.0.0.1:1/api/v1", key)
    for _ in range(3):
        _rate_limited(throttle)
    assert throttle.shared_state is None
    folder = tmp_path / "openrouter-sync"
    files = list(folder.iterdir())
    assert folder.stat().st_mode & 0o777 == 0o700 and len(files) == 1
    assert files[0].stat().st_mode & 0o777 == 0o600 and key not in files[0].read_text()


@pytest.mark.parametrize(("port", "step"), [
    (1, "t.on_rate_limited(Ticket(time.monotonic(), 0.0), None)"),  # joins at its own 429
    (5, "t.on_answer(t.acquire(time.sleep, 5.0))"),  # joins at a look, with no 429 of its own
], ids=["at-its-own-429", "at-a-look"])
def test_by_default_processes_on_one_key_share_once_another_is_rate_limited(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str, port: int, step: str) -> None:
    """A second process on the same key joins at its own 429, or at a look on the first one's 429
    (then it notes itself in the file: an outside check found the first one stayed alone); the
    first joins at its next request after that (it looks at the file every ``STANDBY_LOOK`` seconds)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    url = f"http://127.0.0.1:{port}/api/v1"
    throttle = Throttle.for_endpoint(url, key)
    _rate_limited(throttle)
    assert throttle.shared_state is None
    where = _second_process(url, key, step, tmp_path)
    time.sleep(STANDBY_LOOK)
    throttle.acquire(time.sleep, 5.0)
    assert throttle.shared_state == where


def test_in_standby_the_file_is_looked_at_once_per_look_and_holds_few_processes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    """Without ``STANDBY_LOOK`` every request would cost a stat; without ``_PEERS`` the list of
    processes would outgrow the 4 KiB file."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    throttle = Throttle.for_endpoint("http://127.0.0.1:4/api/v1", key)
    looks: List[str] = []
    real = throttle_module._mtime
    monkeypatch.setattr(throttle_module, "_mtime", lambda path: looks.append(path) or real(path))
    started = time.monotonic()
    for _ in range(2000):
        throttle.on_answer(throttle.acquire(time.sleep, 5.0))
    assert len(looks) <= (time.monotonic() - started) / throttle_module.STANDBY_LOOK + 2
    _rate_limited(throttle)
    path = tmp_path / "openrouter-sync" / os.listdir(tmp_path / "openrouter-sync")[0]
    now = time.monotonic()
    state = json.loads(path.read_text())
    state["present"] = {f"gone{i}": now - 3600.0 for i in range(5)}  # long ago: no longer peers
    path.write_text(json.dumps(state))
    _rate_limited(throttle)
    assert throttle.shared_state is None
    state = json.loads(path.read_text())
    state["present"] = {f"peer{i}": now + i * 1e-3 for i in range(40)}
    path.write_text(json.dumps(state))
    _rate_limited(throttle)
    assert throttle.shared_state == str(path)
    assert len(json.loads(path.read_text())["present"]) == throttle_module._PEERS


def test_a_default_directory_that_is_not_this_users_alone_shares_nothing_quietly(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "openrouter-sync"
    folder.mkdir()
    folder.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="openrouter_sync"):
        throttle = Throttle.for_endpoint("http://127.0.0.1:6/api/v1", key)
        _rate_limited(throttle)
    assert throttle.shared_state is None and not list(folder.iterdir()) and not caplog.text


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
