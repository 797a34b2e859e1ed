"""The attempt pipeline: one loop for plain and streamed calls.

    throttle.acquire -> transport.open -> (read and classify | open the event stream) -> throttle report

run under the compiled retry policy. A plain attempt returns the ``Outcome`` of the whole
answer; a streamed attempt reads up to the first text delta (everything before it may be
retried: nothing was shown yet) and returns an ``Outcome`` carrying the open ``EventStream``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Optional

from ._log import logger
from .classify import Outcome, classify_response, network_outcome
from .deadline import Deadline
from .error_types import ErrorType
from .events import EventStream
from .request import CallSpec
from .result import ExecutionResult, utc_now
from .retry import Activity, CallClock, Interrupted, RetryPolicy, compile_policy, interruptible_sleep, is_refusal
from .throttle import Throttle
from .transport import Transport, TransportError

Sleep = Callable[[float], None]
CHAT_PATH = "/chat/completions"
_SIGNALS = frozenset({429, 503, 529})  # refusals the throttle hears of: it slows the scope they name


class CallState(CallClock):
    """One call's book-keeping across its attempts."""

    def __init__(self, clock: Callable[[], float], sleep: Sleep, cancel: Optional[threading.Event],
                 activity: Activity, budget: Optional[float]) -> None:
        super().__init__(clock)
        self.cancel = cancel
        self.sleep = interruptible_sleep(cancel, sleep)
        self.activity = activity
        self.budget = math.inf if budget is None else budget
        self.attempts = 0
        self.waited = 0.0
        self.unanswered = 0
        self.answered: Optional[Outcome] = None  # the server's last HTTP answer
        self.read_timeouts = 0  # streamed attempts sent whose answer did not come (or stalled)

    def budget_left(self) -> float:
        return self.budget - self.elapsed()

    def retry_sleep(self, seconds: float) -> None:
        """The sleep between attempts: counted as "retrying" while it lasts."""
        self.activity.add(1)
        try:
            self.sleep(seconds)
            self.waited += seconds
        finally:
            self.activity.add(-1)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


@dataclass
class CallRecord:
    """What the pipeline hands back: the last outcome, and how the call went."""

    outcome: Outcome
    attempts: int
    waited: float
    unanswered: int
    started_at: datetime
    duration: float

    def to_result(self, spec: CallSpec) -> ExecutionResult:
        result = self.outcome.to_result(requested_model=spec.model, duration=self.duration,
                                        started_at=self.started_at, attempts=self.attempts, waited=self.waited,
                                        unanswered=self.unanswered)
        result.sheet_id = spec.sheet_id
        return result


def unconfigured_result(spec: CallSpec, why: str) -> ExecutionResult:
    """The result of a call that could not be made for want of a usable key (nothing is sent)."""
    logger.error("configuration error: %s; no request sent", why)
    return ExecutionResult(False, "", why, 0.0, exit_code=1, started_at=utc_now(), model=spec.model, attempts=0,
                           error_type=ErrorType.CONFIGURATION, error_message=why, sheet_id=spec.sheet_id)


def scopes_for(model: str) -> tuple[str, ...]:
    """The throttle scopes a request to ``model`` goes through (the key-wide one always applies)."""
    return (f"model:{model}", "free") if model.endswith(":free") else (f"model:{model}",)


class Pipeline:
    """Runs calls: attempts under the retry policy, each through the throttle and the transport."""

    def __init__(self, transport: Transport, throttle_for: Callable[[str], Throttle], policy: RetryPolicy, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Sleep = time.sleep) -> None:
        self.transport = transport
        self.throttle_for = throttle_for
        self.clock, self.sleep = clock, sleep
        self.activity = Activity()
        self.policy = policy

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: RetryPolicy) -> None:
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, got {type(policy).__name__}")
        self._retrying = compile_policy(policy)
        self._policy = policy

    def run(self, spec: CallSpec, key: str, *, stream: bool = False,
            cancel: Optional[threading.Event] = None) -> CallRecord:
        """Make the call; never raises for network or API failures (``Interrupted`` when cancelled)."""
        body = spec.body(stream)  # a ValueError for a bad option comes before anything is sent
        started_at, start = utc_now(), self.clock()
        call = CallState(self.clock, self.sleep, cancel, self.activity, self._policy.max_elapsed_seconds)
        retrying = self._retrying.copy(sleep=call.retry_sleep)
        outcome: Outcome = retrying(self._attempt, call, spec, key, body, stream)
        if outcome.status is None and call.answered is not None and is_refusal(outcome):
            outcome = call.answered  # ended unsent at the shared gate: the result is what the server last said
        return CallRecord(outcome, call.attempts, call.waited, call.unanswered, started_at, self.clock() - start)

    def _attempt(self, call: CallState, spec: CallSpec, key: str, body: bytes, stream: bool) -> Outcome:
        call.attempts += 1
        policy, throttle = self._policy, self.throttle_for(key)
        budget = max(0.0, call.budget_left())
        ticket = throttle.acquire(call.sleep, min(policy.max_wait_seconds, budget), budget=budget,
                                  gate=policy.max_attempts > 1, scopes=scopes_for(spec.model))
        call.waited += ticket.waited
        if not ticket.admitted:
            unsent = Outcome(ErrorType.RATE_LIMIT, 429, f"HTTP 429 (rate_limit): not sent: requests to this endpoint "
                             f"must wait {ticket.refused_for:.1f}s more", retry_after=ticket.refused_for,
                             retry_source="shared back-off", sent=False)
            call.refused += is_refusal(unsent)  # one rule for what is free, sent or not
            return unsent
        left = call.budget_left()
        timeout = min(spec.timeout, left)
        if timeout <= 0:
            return network_outcome(ErrorType.TIMEOUT, "max_elapsed_seconds passed before the attempt could start")
        deadline = Deadline.after(timeout, tag=call.cancel)
        if stream:  # a stream's deadline counts from its last delta; the call's budget bounds its length
            deadline.stall_timer(spec.timeout, time.monotonic() + left)
        outcome = self._exchange(call, spec, key, body, stream, deadline, timeout)
        if outcome.status is not None:
            call.answered = outcome
        call.refused += is_refusal(outcome)  # a 429, a 529, a 503 naming a wait: free, bounded by time
        if outcome.status in _SIGNALS:  # a signal for the scope it names (a 503 with no wait, too: an attempt)
            shed = outcome.status != 429  # a 503 or 529: the model's provider shed it
            scope = f"model:{spec.model}" if shed else _scope_name(outcome.scope, spec.model)
            throttle.on_rate_limited(ticket, outcome.retry_after, scope, shed=shed)
        else:
            throttle.on_answer(ticket)
        call.unanswered += outcome.unanswered
        if stream and outcome.error_type == ErrorType.TIMEOUT and outcome.sent:
            call.read_timeouts += 1
            if call.read_timeouts >= policy.max_read_timeouts:
                outcome = dataclasses.replace(outcome, final=True)
        return outcome

    def _exchange(self, call: CallState, spec: CallSpec, key: str, body: bytes, stream: bool, deadline: Deadline,
                  timeout: float) -> Outcome:
        headers = spec.headers
        if stream:
            headers = {**headers, "Accept": "text/event-stream"} if headers else _STREAM_HEADERS
        try:
            response = self.transport.open("POST", CHAT_PATH, deadline, key=key, body=body, headers=headers)
            evented = "text/event-stream" in response.headers.get("Content-Type", "").lower()
            if evented and response.status == 200:
                if stream:
                    return _open_stream(EventStream(response))
                return _read_stream(EventStream(response))  # streamed though not asked: read it all
            try:
                content = response.read()
            finally:
                response.close()
            return classify_response(response.status, response.headers, content)
        except TransportError as exc:
            deadline.finish()
            if call.cancelled:
                raise Interrupted() from None
            prefix = {ErrorType.TIMEOUT: f"Timeout after {timeout:g}s: ", ErrorType.CONNECTION: "Connection error: "}
            return network_outcome(exc.error_type, prefix.get(exc.error_type, "") + str(exc), sent=exc.sent)


_STREAM_HEADERS = {"Accept": "text/event-stream"}


def _open_stream(reader: EventStream) -> Outcome:
    """Read a stream up to its first delta (text, reasoning, refusal or a tool call): an outcome
    carrying the open reader, or the outcome of a stream that ended (or failed) before any."""
    try:
        first = reader.next_event()
    except TransportError:
        reader.close()
        raise
    if first is None:
        reader.close()
        return reader.outcome()
    reader.unread(first)
    return Outcome(None, 0, status=200, generation_id=reader.folder.generation_id, reader=reader)


def _read_stream(reader: EventStream) -> Outcome:
    """The outcome of a whole event stream (an answer streamed to a call that did not ask for it)."""
    try:
        while reader.next_delta() is not None:
            pass
    finally:
        reader.close()
    return reader.outcome()


def _scope_name(scope: Optional[str], model: str) -> Optional[str]:
    return f"model:{model}" if scope == "model" else scope

