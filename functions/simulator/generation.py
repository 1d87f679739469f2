"""The generating endpoints' shared engine: validation, faults, queueing, timing and the bytes
on the wire, for ``/v1/chat/completions`` and ``/v1/completions`` alike.

An endpoint (``chat_endpoint.py``, ``text_completion_endpoint.py``) only turns a body into a
:class:`GenerationPlan` and a :class:`Renderer`; everything else a request lives through is
here, once. Every wait (the run queue, time to first token, inter-token gaps, a hang) races
the client's disconnect: a client that leaves is counted as aborted and gets nothing more,
which is what the gateway's cancellation tests observe.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from functions.simulator.asgi import (
    JSON,
    SSE_HEADERS,
    ClientGone,
    Receive,
    Scope,
    Send,
    read_body,
    send_bytes,
    send_empty,
)
from functions.simulator.chunks import DONE
from functions.simulator.disconnect import DisconnectWatcher
from functions.simulator.errors import (
    SCALING,
    ApiError,
    engine_dead,
    error_body,
    invalid_request,
    stream_error_event,
)
from functions.simulator.faults import Fault, FaultKind
from functions.simulator.overrides import (
    ChatHeaders,
    Timing,
    resolve_fault,
    resolve_timing,
    scan_headers,
)

if TYPE_CHECKING:
    from functions.simulator.metrics import ModelMetrics
    from functions.simulator.planning import GenerationPlan
    from functions.simulator.state import SimulatorState

_BREAKING = frozenset({FaultKind.CUT, FaultKind.DROP, FaultKind.STALL})


class SimulatedConnectionDrop(Exception):  # noqa: N818 - raised on purpose, not a failure
    """Raised to make uvicorn close the connection mid-response (the ``drop:N`` fault)."""


class Outcome(enum.Enum):
    DONE = "done"
    ABORTED = "aborted"
    FAILED = "failed"


class Renderer(Protocol):
    """The bytes of one reply, in the endpoint's wire format."""

    def body(self) -> bytes:
        """The whole non-streamed JSON response."""
        ...

    def opening(self) -> list[bytes]:
        """The events sent at the first token, before any choice's first piece."""
        ...

    def step(self, step: int, events: list[bytes]) -> None:
        """Append every choice's events of decode step ``step`` (none for a choice that has
        finished). Called once per token on the hot path, so it appends rather than returns."""
        ...

    def usage(self, completion_tokens: int) -> bytes:
        """The ``include_usage`` event."""
        ...


def check_content_type(raw: bytes | None) -> None:
    media_type = (raw or b"").split(b";", 1)[0].strip().lower()
    if media_type != JSON:
        raise invalid_request("Unsupported Media Type: Only 'application/json' is allowed")


def _generation_failure(after: int) -> ApiError:
    return ApiError(
        500,
        "InternalServerError",
        f"EngineCore encountered an issue after {after} tokens (simulated fault).",
    )


@dataclass(slots=True)
class _Job:
    """One admitted request on its way to the client."""

    plan: GenerationPlan
    renderer: Renderer
    timing: Timing
    fault: Fault
    watcher: DisconnectWatcher
    send: Send
    metrics: ModelMetrics
    started: float = 0.0


def _body(data: bytes, *, more: bool = True) -> dict[str, object]:
    return {"type": "http.response.body", "body": data, "more_body": more}


class GenerationEndpoint:
    """One generating endpoint of one app, bound to that app's state.

    Subclasses say how a body becomes a plan (:meth:`plan`) and how a plan is written
    (:meth:`renderer`); ``id_prefix`` is vLLM's (``chatcmpl-``, ``cmpl-``).
    """

    id_prefix = ""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state
        options = state.options
        self._legacy = options.legacy_errors
        self._default_timing = Timing(
            options.ttft_ms / 1000.0, options.itl_ms / 1000.0, options.tokens
        )

    def plan(self, body: bytes, timing: Timing) -> tuple[GenerationPlan, str | None]:
        """Validate ``body`` (raising ``ApiError``); the plan and the body's ``request_id``."""
        raise NotImplementedError

    def renderer(self, plan: GenerationPlan, completion_id: str, created: int) -> Renderer:
        raise NotImplementedError

    async def _send_error(self, send: Send, error: ApiError) -> None:
        await send_bytes(send, error.status, error_body(error, legacy=self._legacy))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        headers = scan_headers(scope)
        try:
            body = await read_body(receive)
        except ClientGone:
            state.counts.aborted += 1
            return
        if state.options.record_requests:
            state.last_chat_headers = scope["headers"]
            state.last_chat_body = body
        try:
            timing = resolve_timing(headers, self._default_timing)
            fault = resolve_fault(headers, state.dice)
            if fault.kind is FaultKind.SCALING_503:
                # vLLM's elastic-EP middleware answers before anything else runs.
                state.counts.count_fault(fault.label)
                await send_bytes(send, 503, SCALING)
                return
            check_content_type(headers.content_type)
            plan, body_request_id = self.plan(body, timing)
            if not state.healthy:
                raise engine_dead()
        except ApiError as error:
            await self._send_error(send, error)
            return

        metrics = state.metrics.by_model[plan.model]
        if fault.kind is not FaultKind.NONE:
            state.counts.count_fault(fault.label)
            if await self._fail_at_once(fault, send):
                metrics.finished["error"] += len(plan.choices)
                return
        completion_id = self.id_prefix + _request_id(headers, body_request_id)
        renderer = self.renderer(plan, completion_id, int(time.time()))
        job = _Job(plan, renderer, timing, fault, DisconnectWatcher(receive), send, metrics)
        await self._run(job)

    async def _fail_at_once(self, fault: Fault, send: Send) -> bool:
        """The faults that answer before generating anything; ``True`` if one did."""
        if fault.kind is FaultKind.ERROR_500:
            await self._send_error(send, engine_dead())
            return True
        if fault.kind is FaultKind.EMPTY_500:
            await send_empty(send, 500)
            return True
        return False

    async def _run(self, job: _Job) -> None:
        counts = self._state.counts
        counts.chat_in_flight += 1
        choices = len(job.plan.choices)
        try:
            if job.fault.kind is FaultKind.HANG:
                await job.watcher.until_disconnect()
                outcome = Outcome.ABORTED
            else:
                outcome = await self._generate(job)
        except SimulatedConnectionDrop:
            job.metrics.finished["error"] += choices
            raise
        finally:
            self._state.counts.chat_in_flight -= 1
            job.watcher.close()
        if outcome is Outcome.ABORTED:
            self._state.counts.aborted += 1
            job.metrics.finished["abort"] += choices
        elif outcome is Outcome.FAILED:
            job.metrics.finished["error"] += choices

    async def _generate(self, job: _Job) -> Outcome:
        """Hold a run slot (queueing if all are taken) while the reply is produced."""
        plan, metrics = job.plan, job.metrics
        job.started = time.perf_counter()
        if plan.stream:
            # Starlette sends the headers as soon as the StreamingResponse starts, before the
            # request even reaches the engine's queue: a client sees 200, then waits.
            await job.send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        scheduler = self._state.scheduler
        if not scheduler.try_acquire():
            waiter = scheduler.enqueue()
            metrics.waiting += 1
            try:
                admitted = await job.watcher.wait(waiter)
            except BaseException:
                scheduler.leave_queue(waiter)
                raise
            finally:
                metrics.waiting -= 1
            if not admitted:
                scheduler.leave_queue(waiter)
                return Outcome.ABORTED
        metrics.running += 1
        try:
            outcome = await (self._stream(job) if plan.stream else self._respond(job))
        finally:
            metrics.running -= 1
            scheduler.release()
        if outcome is Outcome.DONE:
            metrics.prompt_tokens += plan.prompt_tokens
            metrics.generation_tokens += plan.completion_tokens
            for choice in plan.choices:
                # The engine finished a tool call with "stop"; only the OpenAI layer names it
                # "tool_calls", and vLLM's request_success_total counts the engine's reason.
                reason = "stop" if choice.finish_reason == "tool_calls" else choice.finish_reason
                metrics.finished[reason] += 1
            metrics.e2e.observe(time.perf_counter() - job.started)
        return outcome

    async def _respond(self, job: _Job) -> Outcome:
        """Non-streaming: one JSON body once the whole reply would have been generated."""
        plan, fault, watcher = job.plan, job.fault, job.watcher
        ttft, itl = job.timing.ttft_s, job.timing.itl_s
        longest = plan.longest
        if fault.kind in _BREAKING and fault.after < longest:
            if not await watcher.sleep(ttft + itl * max(fault.after - 1, 0)):
                return Outcome.ABORTED
            return await self._break_response(job)
        decode_s = itl * max(longest - 1, 0)
        if ttft + decode_s > 0.0 and not await watcher.sleep(ttft + decode_s):
            return Outcome.ABORTED
        job.metrics.ttft.observe(time.perf_counter() - job.started - decode_s)
        await send_bytes(job.send, 200, job.renderer.body())
        return Outcome.DONE

    async def _break_response(self, job: _Job) -> Outcome:
        """The ``cut``/``drop``/``stall`` faults striking a non-streaming request."""
        fault = job.fault
        if fault.kind is FaultKind.CUT:
            await self._send_error(job.send, _generation_failure(fault.after))
            return Outcome.FAILED
        if fault.kind is FaultKind.STALL:
            await job.watcher.until_disconnect()
            return Outcome.ABORTED
        # drop: promise the whole body, deliver half, then let uvicorn close the socket.
        body = job.renderer.body()
        headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
        await job.send({"type": "http.response.start", "status": 200, "headers": headers})
        await job.send(_body(body[: len(body) // 2]))
        raise SimulatedConnectionDrop

    async def _stream(self, job: _Job) -> Outcome:
        """SSE after the headers: the opening at TTFT, a token every ITL, usage, ``[DONE]``."""
        plan, watcher, send, renderer = job.plan, job.watcher, job.send, job.renderer
        if not await watcher.sleep(job.timing.ttft_s):
            return Outcome.ABORTED
        job.metrics.ttft.observe(time.perf_counter() - job.started)

        itl = job.timing.itl_s
        breaks_at = job.fault.after if job.fault.kind in _BREAKING else -1
        # Events of one step go out in one write; with no ITL the whole stream is one write.
        events = renderer.opening()
        for step in range(max(plan.longest, 1)):
            if step == breaks_at:
                return await self._break_stream(job, events)
            if step and itl > 0.0:
                await send(_body(b"".join(events)))
                events.clear()
                if not await watcher.sleep(itl):
                    return Outcome.ABORTED
            renderer.step(step, events)
        if plan.include_usage:
            events.append(renderer.usage(plan.completion_tokens))
        events.append(DONE)
        await send(_body(b"".join(events), more=False))
        return Outcome.DONE

    async def _break_stream(self, job: _Job, events: list[bytes]) -> Outcome:
        """The ``cut``/``drop``/``stall`` faults striking mid-stream."""
        fault = job.fault
        if fault.kind is FaultKind.CUT:
            failure = _generation_failure(fault.after)
            events.append(stream_error_event(failure, legacy=self._legacy))
            events.append(DONE)
            await job.send(_body(b"".join(events), more=False))
            return Outcome.FAILED
        await job.send(_body(b"".join(events)))
        if fault.kind is FaultKind.DROP:
            raise SimulatedConnectionDrop
        await job.watcher.until_disconnect()
        return Outcome.ABORTED


def _request_id(headers: ChatHeaders, from_body: str | None) -> str:
    """vLLM's id: the ``X-Request-Id`` header, else the body's ``request_id``, else random."""
    raw = headers.request_id
    if raw is not None:
        return raw.decode("latin-1")
    return from_body or secrets.token_hex(8)
