"""The Redis backend of the shared rate-limit state, against a real ``redis-server`` on 127.0.0.1.

Skipped where ``redis-server`` or the ``redis`` package is missing, except in CI (``$CI`` or
``$OPENROUTER_SYNC_REQUIRE_REDIS`` set, as ``.ci/run`` does), where a missing one fails: CI must
not skip these silently.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from openrouter_sync.throttle import Throttle

REDIS_SERVER = shutil.which("redis-server")
try:
    import redis
    HAVE_PACKAGE = True
except ImportError:
    HAVE_PACKAGE = False


def _require_redis() -> None:
    missing = [what for what, ok in (("redis-server", REDIS_SERVER), ("the redis package", HAVE_PACKAGE)) if not ok]
    if missing:
        message = f"{' and '.join(missing)} not installed"
        if os.environ.get("CI") or os.environ.get("OPENROUTER_SYNC_REQUIRE_REDIS"):
            pytest.fail(f"{message}: CI must run the Redis tests (see .ci/run)")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throw-away ``redis-server`` on a free port of 127.0.0.1, in a temporary directory."""

    def __init__(self, password: Optional[str] = None) -> None:
        assert REDIS_SERVER is not None
        self.port = _free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def url(self, name: Optional[str] = None, password: Optional[str] = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0" + (f"#{name}" if name else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    _require_redis()
    running = RedisServer()
    yield running
    running.stop()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server for this test alone (to stop it, or to give it a password)."""
    _require_redis()
    running = RedisServer(password="pw-" + uuid.uuid4().hex)
    yield running
    running.stop()


@pytest.fixture
def name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class Clock:
    """A monotonic clock that moves only when something sleeps."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = self.start = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        assert self.now - self.start < 60, "slept a minute: a slot from another clock was misread"


def state_for(url: str, name: Optional[str] = None, clock: Any = time.monotonic, wall: Any = time.time,
              **kwargs: Any) -> Any:
    from openrouter_sync.ratelimit.redis_state import RedisState

    return RedisState(url, name, clock=clock, wall=wall, **kwargs)


def throttle_on(state: Any, clock: Any = time.monotonic, rpm: Optional[float] = None) -> Throttle:
    """A throttle sharing through ``state``: what ``Throttle.shared(url)`` builds in another process."""
    throttle = Throttle(rpm, clock=clock)
    throttle._shared = state
    return throttle


# ----- sharing -----
def one_chain(sent: List[float], start: float, interval: float) -> bool:
    """Whether sends (sorted) took the slots of ONE chain begun no earlier than ``start``: the i-th
    goes no earlier than ``i`` intervals after it. A send may go late (a busy machine wakes a
    sleeper late), never early; two independent chains would send side by side."""
    return all(t >= start + i * interval - 0.002 for i, t in enumerate(sent))


def test_two_throttles_share_slots_through_redis(server: RedisServer, name: str) -> None:
    """Two throttles (two processes, or two machines whose clocks agree) on one Redis state: each
    send takes the next slot of ONE chain, 100 ms apart at 600/min."""
    clock = Clock()
    a = throttle_on(state_for(server.url(), name, clock, lambda: clock() + 1e9), clock, rpm=600)
    b = throttle_on(state_for(server.url(), name, clock, lambda: clock() + 1e9), clock, rpm=600)
    sent = []
    for throttle in (a, b, a, b, b, a):
        ticket = throttle.acquire(clock.sleep, 60)
        throttle.on_answer(ticket)
        sent.append(ticket.sent_at)
    assert sent == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4, 100.5])


def test_a_rate_measured_by_one_throttle_is_taken_over_by_the_other(server: RedisServer, name: str) -> None:
    """Throttle a meets a token bucket (10/s, burst 5) and measures its rate; throttle b, which
    never saw a 429, takes that rate over from Redis."""
    clock = Clock()
    a = throttle_on(state_for(server.url(), name, clock, lambda: clock() + 1e9), clock)
    b = throttle_on(state_for(server.url(), name, clock, lambda: clock() + 1e9), clock)
    assert b.acquire(clock.sleep, 60).admitted and b.learned_rate is None
    tokens, last = 5.0, clock.now
    for _ in range(300):
        ticket = a.acquire(clock.sleep, 60)
        clock.now += 0.001
        tokens, last = min(5.0, tokens + (clock.now - last) * 10.0), clock.now
        if tokens >= 1.0:
            tokens -= 1.0
            a.on_answer(ticket)
        else:
            a.on_rate_limited(ticket, None)
        if a._key.measured:
            break
    assert a._key.measured and a.learned_rate == pytest.approx(10.0, rel=0.2)
    b.acquire(clock.sleep, 60)  # takes the shared state over
    assert b.learned_rate == pytest.approx(a.learned_rate)


@pytest.mark.subprocess
def test_processes_share_one_pace_through_redis(server: RedisServer, name: str) -> None:
    """Two real processes, ``Throttle.shared(url)``, 1200/min between them: sends 50 ms apart."""
    start_at = time.time() + 0.8
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _child(server.url(name), "pace", "1200", str(start_at)), range(2)))
    sent = sorted(t for r in results for t in r["sent"])
    assert len(sent) == 16 and one_chain(sent, start_at, 0.05), [round(t - start_at, 4) for t in sent]
    assert all(r["cost"] is not None and r["cost"] < 0.05 for r in results)  # seconds per access, measured


CHILD = """
import json, os, sys, time
from openrouter_sync.throttle import Throttle
url, role, arg = sys.argv[1], sys.argv[2], float(sys.argv[3])
if role == "pace":
    t = Throttle.shared(url, requests_per_minute=arg)
    start_at = float(sys.argv[4])
    while time.time() < start_at:
        time.sleep(0.001)
    sent = []
    for _ in range(8):
        ticket = t.acquire(time.sleep, 60)
        sent.append(ticket.sent_at + time.time() - time.monotonic())  # wall time: comparable between processes
        t.on_answer(ticket)
    print(json.dumps({"sent": sent, "cost": t.shared_cost()}))
elif role == "hold-lock":
    from openrouter_sync.ratelimit.redis_state import RedisState
    with RedisState(url, lock_ttl_ms=int(arg)).locked() as state:
        assert state is not None
        print("locked", flush=True)
        time.sleep(60)
"""


def _child(*args: str, timeout: float = 20.0) -> Dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.subprocess
def test_a_process_killed_holding_the_lock_blocks_the_next_only_until_the_ttl(server: RedisServer,
                                                                               name: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", CHILD, server.url(name), "hold-lock", "500"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
        started = time.monotonic()
        with state_for(server.url(), name).locked() as state:
            waited = time.monotonic() - started
            assert state is not None  # the lock, not a fallback
        assert 0.2 < waited < 1.0  # held by the dead process until its 0.5 s TTL ran out, not longer
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)


def test_a_lock_held_past_its_ttl_is_not_released_nor_written_by_its_late_holder(server: RedisServer,
                                                                               name: str) -> None:
    slow = state_for(server.url(), name, lock_ttl_ms=100)
    other = state_for(server.url(), name)
    with slow.locked() as mine:
        assert mine is not None
        mine["sends"] = 1
        time.sleep(0.15)  # the TTL runs out: another takes the lock
        with other.locked() as theirs:
            assert theirs is not None
            theirs["sends"] = 7
    assert slow.lost_locks == 1
    with other.locked() as state:
        assert state is not None and state["sends"] == 7  # the late holder overwrote nothing


def test_threads_on_two_throttles_take_the_slots_of_one_chain(server: RedisServer, name: str) -> None:
    a = throttle_on(state_for(server.url(), name), rpm=1200)
    b = throttle_on(state_for(server.url(), name), rpm=1200)
    sent: List[float] = []

    def send(throttle: Throttle) -> None:
        ticket = throttle.acquire(time.sleep, 60)
        throttle.on_answer(ticket)
        assert ticket.sent_at is not None
        sent.append(ticket.sent_at)

    began = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(send, [a, b] * 6))
    sent.sort()
    assert len(sent) == 12 and one_chain(sent, began, 0.05), [round(t - began, 4) for t in sent]


# ----- time across machines -----
def test_times_are_stored_as_wall_clock_and_read_back_in_this_machines_monotonic_seconds(
        server: RedisServer, name: str) -> None:
    """Machine A booted long ago (monotonic 5000), machine B just now (monotonic 20); their wall
    clocks agree. A slot A writes 3.5 s ahead is 3.5 s ahead for B too."""
    wall = 1_700_000_000.0
    a = state_for(server.url(), name, clock=lambda: 5000.0, wall=lambda: wall)
    b = state_for(server.url(), name, clock=lambda: 20.0, wall=lambda: wall)
    with a.locked() as state:
        assert state is not None
        state.update(next_slot=5003.123456789, rate_at=4999.5, grow_from=4990.25, rate=2.0, sends=4,
                     reacted=float("-inf"), refused=[[4998.0, 7, "a"], ["junk"]])
    raw = json.loads(redis.Redis(port=server.port).get(f"openrouter-sync:{{{name}}}:state"))
    assert raw["next_slot"] == pytest.approx(wall + 3.123456789, rel=0, abs=1e-6) and "base" not in raw
    with b.locked() as state:
        assert state is not None
        assert state["next_slot"] == pytest.approx(23.123456789, abs=1e-6)
        assert state["rate_at"] == pytest.approx(19.5) and state["grow_from"] == pytest.approx(10.25)
        assert state["refused"] == [[pytest.approx(18.0), 7, "a"], ["junk"]] and state["reacted"] == float("-inf")
        assert state["rate"] == 2.0 and state["sends"] == 4 and "base" not in state
    with a.locked() as state:
        assert state is not None and state["next_slot"] == 5003.123456789  # exactly what it wrote
        assert state["rate_at"] == 4999.5 and state["refused"][0][0] == 4998.0


def test_a_throttle_on_another_machine_waits_for_the_slot_the_first_one_took(server: RedisServer,
                                                                          name: str) -> None:
    clock_a, clock_b = Clock(5000.0), Clock(20.0)  # different boot times, one wall clock
    wall = 1_700_000_000.0
    a = throttle_on(state_for(server.url(), name, clock_a, lambda: wall + clock_a.now - 5000.0), clock_a, rpm=60)
    b = throttle_on(state_for(server.url(), name, clock_b, lambda: wall + clock_b.now - 20.0), clock_b, rpm=60)
    assert a.acquire(clock_a.sleep, 60).sent_at == 5000.0
    ticket = b.acquire(clock_b.sleep, 60)
    assert ticket.sent_at == pytest.approx(21.0) and ticket.waited == pytest.approx(1.0)  # one second later


def test_a_base_key_or_garbage_in_redis_reads_as_nothing(server: RedisServer, name: str) -> None:
    client = redis.Redis(port=server.port)
    key = f"openrouter-sync:{{{name}}}:state"
    client.set(key, b'{"next_slot": 1e30, "base": 12')  # half a JSON object
    with state_for(server.url(), name).locked() as state:
        assert state == {}
    client.set(key, b'{"sends": 3, "base": 12345.0}')  # a file's reboot check: not used here
    with state_for(server.url(), name).locked() as state:
        assert state == {"sends": 3}
    client.set(key, b'{"next_slot": "soon"}')  # not ours: the throttle starts afresh
    t = throttle_on(state_for(server.url(), name))
    assert t.acquire(time.sleep, 1.0).admitted


CORRUPT = [b'{"sends": Infinity}', b'{"slot_gen": 1e400, "refused_n": -Infinity}', b"[" * 5000,
           b'{"next_slot": 1e300}', b'{"next_slot": Infinity, "rate": 1e-300, "rate_at": 1e18}',
           b'{"rate": NaN, "grow_from": NaN, "rate_at": 1e3}', b'{"rate": -5, "rate_at": 1e3, "measured": true}',
           b'{"hold": 1e300, "hold_by": "someone-else"}', b'{"hold": 5e5, "hold_by": "someone-else"}',
           b'{"refused": [[NaN, 1, "x"], [1e400, 2, "x"], "junk"], "refused_n": 3}',
           b'{"window_seq": Infinity, "exactness": 1e400}', b'{"x": "' + b"a" * 200_000 + b'"}']


@pytest.mark.parametrize("raw", CORRUPT, ids=[str(i) for i in range(len(CORRUPT))])
def test_a_corrupted_state_never_raises_nor_holds_a_call(raw: bytes, server: RedisServer, name: str,
                                                        tmp_path: Path) -> None:
    """Whatever is stored (a crash, another program, a hand): calls go at once and never raise,
    through Redis and through the file, and the lock is released (the next access is quick)."""
    key = f"openrouter-sync:{{{name}}}:state"
    redis.Redis(port=server.port).set(key, raw)
    path = tmp_path / "state"
    path.write_bytes(raw[:4096])
    for throttle in (throttle_on(state_for(server.url(), name)), Throttle.shared(str(path))):
        started = time.monotonic()
        for _ in range(3):
            ticket = throttle.acquire(time.sleep, 2.0)
            assert ticket.admitted, ticket
            throttle.on_rate_limited(ticket, 0.05)
            throttle.on_answer(throttle.acquire(time.sleep, 2.0))
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("url", [
    "redis://:SECRETAAA#SECRETBBB@127.0.0.1:6390/0",
    "redis://:SECRETCCC/SECRETDDD@127.0.0.1:6390/0#app",
    "redis://user:SECRETEEE?SECRETFFF@127.0.0.1:6390/0",
    "redis://127.0.0.1:6390/0?password=SECRETGGG&SECRETHHH#app",
])
def test_a_password_with_unencoded_delimiters_never_shows(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A password that should have been percent-encoded: no part of it in the path, repr, errors or logs."""
    from openrouter_sync.ratelimit.redis_state import RedisState

    shown: List[str] = []
    with caplog.at_level(logging.DEBUG, logger="openrouter_sync"):
        try:
            store = RedisState(url)
            shown += [store.path, repr(store)]
            with store.locked():
                pass  # nothing listens on that port: a warning
        except ValueError as error:
            shown.append(str(error))
    shown.append(caplog.text)
    assert all("SECRET" not in text for text in shown), shown


# ----- failures -----
def test_redis_stopped_mid_run_falls_back_with_one_warning(own_server: RedisServer, name: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    t = throttle_on(state_for(own_server.url(password=own_server.password), name), rpm=6000)
    for _ in range(3):
        t.on_answer(t.acquire(time.sleep, 60))
    own_server.stop()
    caplog.set_level(logging.WARNING, logger="openrouter_sync")
    started = time.monotonic()
    tickets = [t.acquire(time.sleep, 60) for _ in range(5)]
    assert all(ticket.admitted for ticket in tickets) and time.monotonic() - started < 1.0
    warnings = [r for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(warnings) == 1 and "each process keeps its own" in warnings[0].getMessage()
    assert t._shared is not None and not t._shared.usable
    assert own_server.password is not None and own_server.password not in caplog.text


def test_an_unreachable_redis_never_raises_into_the_request(caplog: pytest.LogCaptureFixture) -> None:
    _require_redis()
    caplog.set_level(logging.WARNING, logger="openrouter_sync")
    url = f"redis://:hunter2-secret@127.0.0.1:{_free_port()}/0#nobody-listens"
    t = Throttle.shared(url, requests_per_minute=6000)
    assert all(t.acquire(time.sleep, 60).admitted for _ in range(3))
    assert caplog.text.count("Redis failed") == 1 and "hunter2" not in caplog.text


def test_the_password_never_shows(own_server: RedisServer, name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="openrouter_sync")
    password = own_server.password
    assert password is not None
    good = state_for(own_server.url(name, password))
    with good.locked() as state:
        assert state is not None  # it authenticated
    t = Throttle.shared(own_server.url(name, password))
    shown = [repr(good), good.path, repr(t), str(t.shared_state), repr(t._shared)]
    assert all(password not in text for text in shown), shown
    assert t.shared_state == f"redis://127.0.0.1:{own_server.port}/0#{name}"
    query = state_for(f"redis://127.0.0.1:{own_server.port}/0?password={password}#{name}")
    assert password not in repr(query) and "password" not in query.path
    with query.locked() as state:
        assert state is not None  # the query form authenticates too
    user = state_for(f"redis://default:{password}@127.0.0.1:{own_server.port}/0#{name}")
    assert password not in repr(user) and user.path.startswith("redis://default@127.0.0.1")

    wrong = state_for(own_server.url(name, password[::-1]))
    with wrong.locked() as state:
        assert state is None  # refused: falls back, with a warning
    assert "Redis failed" in caplog.text and "invalid username-password pair" in caplog.text
    assert password not in caplog.text and password[::-1] not in caplog.text
    with pytest.raises(ValueError) as bad:
        state_for(f"redis://:{password}@127.0.0.1:notaport/0")
    assert password not in str(bad.value) and password not in repr(bad.value) and bad.value.__cause__ is None


# ----- wiring -----
def test_the_environment_variable_takes_a_redis_url(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_SYNC_SHARED_STATE", server.url())
    secret = f"sk-env-{uuid.uuid4().hex}"
    a = Throttle.for_endpoint("https://redis-env.invalid/api/v1", secret)
    b = Throttle.for_endpoint("https://redis-env.invalid/api/v1", secret + "-other")
    assert a is Throttle.for_endpoint("https://redis-env.invalid/api/v1/", secret)
    assert a.shared_state and b.shared_state and a.shared_state != b.shared_state
    assert a.shared_state.startswith(server.url() + "#") and secret not in a.shared_state
    assert a.acquire(time.sleep, 60).admitted and a.shared_cost() is not None


def test_a_malformed_redis_url_in_the_environment_warns_and_does_not_share(monkeypatch: pytest.MonkeyPatch,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    _require_redis()
    caplog.set_level(logging.WARNING, logger="openrouter_sync")
    monkeypatch.setenv("OPENROUTER_SYNC_SHARED_STATE", "redis://:pw-malformed-secret@127.0.0.1:notaport/0")
    throttle = Throttle.for_endpoint("https://redis-bad-url.invalid/v1", f"sk-{uuid.uuid4().hex}")
    assert throttle.shared_state is None and throttle.acquire(time.sleep, 60).admitted
    assert "state is not shared" in caplog.text and "pw-malformed" not in caplog.text


def test_a_forked_child_opens_its_own_connection(server: RedisServer, name: str) -> None:
    import multiprocessing

    if not hasattr(os, "fork") or sys.platform == "darwin":
        pytest.skip("needs fork")
    state = state_for(server.url(), name)
    with state.locked() as content:
        assert content is not None
        content["sends"] = 1
    context = multiprocessing.get_context("fork")
    out: Any = context.Queue()
    child = context.Process(target=_in_child, args=(state, out))
    child.start()
    report = out.get(timeout=10)
    child.join(5)
    assert report == {"own_client": True, "sends": 1}
    with state.locked() as content:  # the parent's connection still works
        assert content is not None and content["sends"] == 2


def _in_child(state: Any, out: Any) -> None:
    inherited = state._client
    with state.locked() as content:
        sends = content["sends"]
        content["sends"] = sends + 1
    out.put({"own_client": state._client is not inherited and state._pid == os.getpid(), "sends": sends})


@pytest.mark.subprocess
def test_the_library_works_without_the_redis_package(tmp_path: Path) -> None:
    code = f"""
import sys
sys.modules["redis"] = None  # as if not installed
import time
from openrouter_sync import OpenRouterBackend, Throttle
t = Throttle.shared({str(tmp_path / "plain.state")!r}, requests_per_minute=6000)
assert t.acquire(time.sleep, 60).admitted and t.shared_cost() is not None
try:
    Throttle.shared("redis://:pw-never-shown@127.0.0.1:1/0")
except ImportError as error:
    assert 'pip install "openrouter-sync[redis]"' in str(error) and "pw-never" not in str(error), error
else:
    raise SystemExit("no ImportError")
import logging, os
logging.basicConfig(level=logging.WARNING, format="%(message)s")
os.environ["OPENROUTER_SYNC_SHARED_STATE"] = "redis://:pw-never-shown@127.0.0.1:1/0"
t = Throttle.for_endpoint("https://x.invalid/v1", "k")  # inside a call: warns, never raises
assert t.shared_state is None and t.acquire(time.sleep, 60).admitted
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert 'OPENROUTER_SYNC_SHARED_STATE: a Redis URL for the shared rate-limit state needs the redis package: ' \
           'pip install "openrouter-sync[redis]" (or ".[redis]" in a clone of the repository); state is not shared' \
           in done.stderr
    assert "pw-never" not in done.stderr


@pytest.mark.subprocess
def test_importing_the_library_never_imports_redis() -> None:
    code = ("import sys, openrouter_sync, openrouter_sync.throttle, openrouter_sync.ratelimit.redis_state; "
            "print('redis' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
