"""The pool of vLLM upstreams: which one takes the next request, and which are fit to.

Pure bookkeeping, no I/O: the client reports what happened (connect failure, a response,
model lists) and asks for an upstream. Routing picks, among upstreams that are up and list
the model, the one with the fewest requests in flight (ties rotate, so equal upstreams
share the load). Passive health: ``eject_after`` consecutive failures (a connection that
could not be made, or a server error answer: an engine dead behind a live HTTP server
answers every chat with a 500) eject an upstream for ``cooldown_s``; after that it is
half-open and exactly one request at a time may try it, and the first that gets a healthy
answer brings it back (as any healthy answer resets the count). Active health:
:meth:`UpstreamPool.mark_down` / :meth:`UpstreamPool.mark_up`, for a health-check flow.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from functions.core.llm.errors import (
    LLMOverloadedError,
    LLMUnavailableError,
    ModelKindError,
    ModelNotServedError,
)
from functions.core.llm.schemas import LLMStats, UpstreamStats

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from functions.core.llm.schemas import UpstreamState


def redact_url(url: str) -> str:
    """``url`` without user info, so it can go into logs, errors and metrics."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class Upstream:
    """One vLLM server and everything the pool knows about it."""

    __slots__ = (
        "base_url",
        "connect_failures_total",
        "consecutive_failures",
        "ejected_until",
        "ejections_total",
        "embeddings",
        "id",
        "in_flight",
        "manual_down",
        "max_in_flight",
        "models",
        "models_due_at",
        "queue_depth",
        "requests_total",
        "root_url",
        "running",
        "trial_in_flight",
        "url",
    )

    def __init__(
        self, base_url: str, upstream_id: str, max_in_flight: int, *, embeddings: bool = False
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # An embedding server (SWITCHBOARD_EMBEDDING_URLS): vLLM serves embeddings only from
        # an embedding model, never beside chat, so it takes embedding requests only.
        self.embeddings = embeddings
        # Probes (/health, /metrics, /version) live at the server root, beside /v1.
        self.root_url = self.base_url.removesuffix("/v1")
        self.url = redact_url(self.base_url)
        self.id = upstream_id
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.consecutive_failures = 0
        self.ejected_until: float | None = None
        self.trial_in_flight = False
        self.manual_down = False
        # None until a /v1/models fetch succeeds; refetched once the clock passes due_at.
        self.models: frozenset[str] | None = None
        self.models_due_at = 0.0
        self.queue_depth: float | None = None
        self.running: float | None = None
        self.requests_total = 0
        self.connect_failures_total = 0
        self.ejections_total = 0

    def state(self, now: float) -> UpstreamState:
        if self.manual_down:
            return "down"
        if self.ejected_until is None:
            return "up"
        return "ejected" if now < self.ejected_until else "half_open"

    def serves(self, model: str | None) -> bool:
        return model is None or (self.models is not None and model in self.models)


def _upstream_ids(urls: Sequence[str]) -> list[str]:
    """Readable ids (``host:port``), made unique with ``#n`` when two URLs share one."""
    ids: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        base = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        candidate, n = base, 2
        while candidate in ids:
            candidate, n = f"{base}#{n}", n + 1
        ids.append(candidate)
    return ids


class Lease:
    """One request's slot on an upstream; ``trial`` when it is the half-open probe."""

    __slots__ = ("trial", "upstream")

    def __init__(self, upstream: Upstream, *, trial: bool) -> None:
        self.upstream = upstream
        self.trial = trial


class UpstreamPool:
    """Routing and health state for a fixed list of upstream base URLs."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        max_in_flight: int,
        eject_after: int,
        cooldown_s: float,
        models_ttl_s: float = 30.0,
        models_retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        embedding_urls: Sequence[str] = (),
    ) -> None:
        everything = [*urls, *embedding_urls]
        ids = _upstream_ids(everything)
        self.upstreams = [
            Upstream(url, ids[i], max_in_flight, embeddings=i >= len(urls))
            for i, url in enumerate(everything)
        ]
        self._eject_after = eject_after
        self._cooldown_s = cooldown_s
        self._models_ttl_s = models_ttl_s
        self._models_retry_s = models_retry_s
        self._clock = clock
        self._next = 0
        self.overloaded_total = 0
        self.retries_total = 0

    def find(self, url_or_id: str) -> Upstream:
        """The upstream with this base URL, root URL or id (trailing slash ignored)."""
        key = url_or_id.rstrip("/")
        for upstream in self.upstreams:
            if key in (upstream.base_url, upstream.root_url, upstream.url, upstream.id):
                return upstream
        raise KeyError(f"unknown upstream {redact_url(key)!r}")

    def acquire(
        self, model: str | None, *, avoid: Iterable[Upstream] = (), embeddings: bool = False
    ) -> Lease:
        """Reserve a slot on the best upstream for ``model``; pair with :meth:`release`.
        ``embeddings``: among the embedding servers (else among the others).

        Upstreams in ``avoid`` (already tried by this request) are used only when nothing
        else is left. Raises :class:`ModelNotServedError` when no upstream lists the model,
        :class:`LLMUnavailableError` when all that do are ejected or down (or when the
        model lists that could hold it are unknown), and :class:`LLMOverloadedError` when
        all that are up are at their cap.
        """
        now = self._clock()
        serving = self.serving(model, embeddings=embeddings)
        usable = [u for u in serving if self._usable(u, now)]
        if not usable:
            raise LLMUnavailableError(
                "every LLM upstream that serves this model is down or ejected",
                details={"model": model, "upstreams": [u.id for u in serving]},
            )
        open_slots = [u for u in usable if u.in_flight < u.max_in_flight]
        if not open_slots:
            self.overloaded_total += 1
            raise LLMOverloadedError(
                "every LLM upstream that serves this model is at its in-flight cap",
                details={
                    "model": model,
                    "in_flight": {u.id: u.in_flight for u in usable},
                    "max_in_flight": usable[0].max_in_flight,
                    "queue_depth": {u.id: u.queue_depth for u in usable},
                },
            )
        avoided = set(avoid)
        fresh = [u for u in open_slots if u not in avoided] or open_slots
        chosen = self._least_loaded(fresh)
        trial = chosen.state(now) == "half_open"
        if trial:
            chosen.trial_in_flight = True
        chosen.in_flight += 1
        chosen.requests_total += 1
        return Lease(chosen, trial=trial)

    def serving(self, model: str | None, *, embeddings: bool = False) -> list[Upstream]:
        """The upstreams that list ``model``, whatever their health: the one rule for
        whether a model is served, used by every send and by checks before one. Only
        embedding servers serve ``embeddings`` requests, and only they do.

        Raises :class:`ModelNotServedError` (naming the models that are served) when every
        list is known and none holds it, :class:`ModelKindError` when only servers of the
        other kind do (a chat model asked for embeddings, or the reverse), and
        :class:`LLMUnavailableError` when some list could not be read yet.
        """
        serving = [u for u in self.upstreams if u.embeddings == embeddings and u.serves(model)]
        if not serving and model is not None:
            other = [u for u in self.upstreams if u.embeddings != embeddings and u.serves(model)]
            if other:
                raise ModelKindError(
                    f"The model `{model}` does not support the "
                    + ("Embeddings API" if embeddings else "Completions API")
                    + (
                        ": it is a generating model (embeddings come from the upstreams "
                        "in SWITCHBOARD_EMBEDDING_URLS)"
                        if embeddings
                        else ": it is an embedding model (POST /v1/embeddings)"
                    ),
                    details={"model": model, "field": "model"},
                )
        if not serving and any(u.models is None for u in self.upstreams):
            raise LLMUnavailableError(
                f"no reachable LLM upstream is known to serve model {model!r}",
                details={"model": model},
            )
        if not serving:
            raise ModelNotServedError(
                f"no LLM upstream serves model {model!r}",
                details={"model": model, "known_models": sorted(self.known_models())},
            )
        return serving

    def _usable(self, upstream: Upstream, now: float) -> bool:
        state = upstream.state(now)
        return state == "up" or (state == "half_open" and not upstream.trial_in_flight)

    def _least_loaded(self, candidates: list[Upstream]) -> Upstream:
        # Start the scan at a rotating offset so that ties go round-robin.
        self._next = (self._next + 1) % len(candidates)
        best = candidates[self._next]
        for i in range(1, len(candidates)):
            candidate = candidates[(self._next + i) % len(candidates)]
            if candidate.in_flight < best.in_flight:
                best = candidate
        return best

    def release(self, lease: Lease) -> None:
        """Give back the slot taken by :meth:`acquire` (exactly once per lease)."""
        lease.upstream.in_flight -= 1
        if lease.trial:
            lease.upstream.trial_in_flight = False

    def record_connect_failure(self, upstream: Upstream) -> bool:
        """The upstream could not be reached; returns True when this ejected it
        (see :meth:`record_failure`)."""
        upstream.connect_failures_total += 1
        return self.record_failure(upstream)

    def record_failure(self, upstream: Upstream) -> bool:
        """The upstream failed a request (unreachable, or a server error answer); returns
        True when this ejected it.

        It is ejected after ``eject_after`` failures in a row, or at once when it already
        was (a failed half-open trial starts a new cooldown).
        """
        upstream.consecutive_failures += 1
        was_ejected = upstream.ejected_until is not None
        if was_ejected or upstream.consecutive_failures >= self._eject_after:
            upstream.ejected_until = self._clock() + self._cooldown_s
            upstream.ejections_total += 1
            return True
        return False

    def record_response(self, upstream: Upstream) -> None:
        """The upstream answered, and not with a server error: it works, so it is back in
        rotation and its failures are forgotten."""
        upstream.consecutive_failures = 0
        upstream.ejected_until = None

    def mark_down(self, url_or_id: str) -> Upstream | None:
        """Take an upstream out of rotation until :meth:`mark_up`; returns it if it was in."""
        upstream = self.find(url_or_id)
        if upstream.manual_down:
            return None
        upstream.manual_down = True
        return upstream

    def mark_up(self, url_or_id: str) -> Upstream | None:
        """Put an upstream back, forgetting passive failures; returns it if it was out."""
        upstream = self.find(url_or_id)
        was_out = upstream.manual_down or upstream.ejected_until is not None
        upstream.manual_down = False
        upstream.consecutive_failures = 0
        upstream.ejected_until = None
        return upstream if was_out else None

    def set_models(self, upstream: Upstream, models: Iterable[str]) -> None:
        """A fresh model list; it is refetched after ``models_ttl_s``."""
        upstream.models = frozenset(models)
        upstream.models_due_at = self._clock() + self._models_ttl_s

    def models_failed(self, upstream: Upstream) -> None:
        """A model-list fetch failed: keep the old list, try again soon."""
        upstream.models_due_at = self._clock() + self._models_retry_s

    def forget_model(self, upstream: Upstream, model: str | None) -> None:
        """The upstream said 404 to a model it listed: drop it there and refetch the list."""
        if upstream.models is not None and model is not None:
            upstream.models = upstream.models - {model}
        upstream.models_due_at = 0.0

    def models_due(self) -> list[Upstream]:
        """Upstreams (not marked down) whose model list should be fetched now."""
        now = self._clock()
        return [u for u in self.upstreams if not u.manual_down and u.models_due_at <= now]

    def is_known(self, model: str) -> bool:
        """Whether some upstream lists ``model`` (whatever its health)."""
        return any(u.models is not None and model in u.models for u in self.upstreams)

    def known_models(self) -> set[str]:
        return {m for u in self.upstreams if u.models is not None for m in u.models}

    def stats(self) -> LLMStats:
        """A snapshot of every upstream and the pool's counters."""
        now = self._clock()
        upstreams = [
            UpstreamStats(
                id=u.id,
                url=u.url,
                state=u.state(now),
                in_flight=u.in_flight,
                max_in_flight=u.max_in_flight,
                consecutive_failures=u.consecutive_failures,
                ejected_for_s=max(0.0, (u.ejected_until or now) - now),
                models=sorted(u.models) if u.models is not None else None,
                requests_total=u.requests_total,
                connect_failures_total=u.connect_failures_total,
                ejections_total=u.ejections_total,
                queue_depth=u.queue_depth,
                running=u.running,
            )
            for u in self.upstreams
        ]
        return LLMStats(
            upstreams=upstreams,
            in_flight=sum(u.in_flight for u in self.upstreams),
            max_in_flight=sum(u.max_in_flight for u in self.upstreams),
            overloaded_total=self.overloaded_total,
            retries_total=self.retries_total,
        )
