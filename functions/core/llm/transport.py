"""The shared ``httpx.AsyncClient`` for vLLM, on an aiohttp connection pool.

httpx keeps the API every caller and test already knows; aiohttp does the socket work at a
fraction of httpcore's CPU cost (see ``bench/bench_llm_transport.py``). The ready-made
``httpx_aiohttp.AiohttpTransport`` was measured too, but it maps "connection refused" and
"server disconnected after the request was sent" both to ``httpx.ConnectTimeout``, which
would make the client retry a request vLLM may already be running. This transport keeps the
distinction httpcore makes: ``ConnectError``/``ConnectTimeout`` only when nothing was sent.

Closing a response before its body is fully read closes the socket at once, so vLLM sees
the disconnect and aborts the generation instead of finishing it for nobody.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import aiohttp
import httpx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from functions.core.settings import Settings

# Below uvicorn's 5 s keep-alive (vLLM's default) so an idle connection is dropped here
# before the server closes it under a request that cannot then be safely retried.
KEEPALIVE_EXPIRY_S = 4.0
# Room for health probes and model-list fetches beside the capped chat requests.
SPARE_CONNECTIONS = 16


# aiohttp's exceptions and the httpx ones httpcore would raise, first match wins (the
# order matters: a connector timeout is also a connector error).
_TRANSLATED: tuple[
    tuple[
        type[aiohttp.ClientError] | tuple[type[aiohttp.ClientError], ...],
        type[httpx.HTTPError],
        str,
    ],
    ...,
] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout, "connect timed out"),
    (aiohttp.ClientConnectorError, httpx.ConnectError, ""),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout, "read timed out"),
    (
        (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError),
        httpx.RemoteProtocolError,
        "server disconnected",
    ),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol, ""),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError, ""),
)


def _httpx_error(exc: aiohttp.ClientError) -> httpx.HTTPError:
    """The httpx exception httpcore would raise for aiohttp's ``exc``."""
    for aiohttp_types, httpx_type, default in _TRANSLATED:
        if isinstance(exc, aiohttp_types):
            return httpx_type(str(exc) or default)
    return httpx.ReadError(str(exc) or type(exc).__name__)


@contextmanager
def _map_errors() -> Iterator[None]:
    """Translate aiohttp's exceptions into the httpx ones httpcore would raise."""
    try:
        yield
    except aiohttp.ClientError as exc:
        raise _httpx_error(exc) from exc


# The response extension holding :meth:`_AiohttpResponseStream.read_chunk`.
READ_CHUNK = "switchboard.read_chunk"


class _AiohttpResponseStream(httpx.AsyncByteStream):
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with _map_errors():
            # iter_any hands over whatever arrived, so SSE events are never held back.
            async for chunk in content.iter_any():
                yield chunk

    async def read_chunk(self) -> bytes:
        """Whatever arrived next (``b""`` at the end), straight from aiohttp.

        The stream reader's path (``response.extensions[READ_CHUNK]``): one call per chunk
        instead of httpx's four nested generators, with the same errors.
        """
        try:
            return await self._response.content.readany()
        except aiohttp.ClientError as exc:
            raise _httpx_error(exc) from exc

    async def aclose(self) -> None:
        # Synchronous on purpose: it must finish even inside a cancelled task.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends requests through one ``aiohttp.ClientSession``.

    HTTP/1.1 only, no proxies, no cookies, no redirects. Of ``limits`` it honours
    ``max_connections`` and ``keepalive_expiry`` (idle connections are all kept until then).
    The session is created on first use, inside the running event loop, so the transport
    itself can be built anywhere.
    """

    def __init__(self, *, limits: httpx.Limits | None = None) -> None:
        self._limits = limits or httpx.Limits()
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or KEEPALIVE_EXPIRY_S,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open_session()
        timeout = request.extensions.get("timeout", {})
        body: bytes | httpx.AsyncByteStream | None
        try:
            body = request.content or None
        except httpx.RequestNotRead:
            body = request.stream  # type: ignore[assignment]
        with _map_errors():
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body,
                allow_redirects=False,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    # aiohttp's "connect" also covers waiting for a free pooled connection.
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        stream = _AiohttpResponseStream(response)
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions={"http_version": b"HTTP/1.1", READ_CHUNK: stream.read_chunk},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _NoCookies(httpx.Cookies):
    """vLLM sets no cookies, and the gateway must not carry any between callers.

    httpx parses every response for ``Set-Cookie`` through ``http.cookiejar`` (building a
    ``urllib`` request each time): about a tenth of the client's CPU per call.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one ``httpx.AsyncClient`` the LLM client shares across all requests.

    Pool size follows the in-flight caps, so a capped request never waits for a connection.
    Only the connect timeout is set here; the client enforces the per-phase timeouts itself.
    """
    upstreams = len(settings.llm_urls) + len(settings.embedding_urls)
    max_connections = settings.llm_max_inflight_per_upstream * upstreams
    limits = httpx.Limits(
        max_connections=max_connections + SPARE_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY_S
    )
    client = httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits),
        timeout=httpx.Timeout(
            connect=settings.llm_connect_timeout_s,
            pool=settings.llm_connect_timeout_s,
            read=None,
            write=None,
        ),
        trust_env=False,
    )
    # The public ``cookies`` setter copies into a plain ``Cookies``; swap the jar object.
    client._cookies = _NoCookies()
    return client
