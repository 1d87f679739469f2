"""SSE events of a streamed chat completion, byte for byte as vLLM frames them.

vLLM serializes chunks with ``exclude_unset=True``, so each kind of chunk has its own fixed
set of keys (see the contract, section 3). The parts that never change within a stream are
encoded once per stream; each token costs one small string encode.
"""

from __future__ import annotations

import msgspec

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


class ChunkEncoder:
    """Builds the ``data: ...\\n\\n`` events of one stream."""

    __slots__ = ("_continuous", "_head", "_prompt_tokens")

    def __init__(
        self,
        *,
        completion_id: str,
        created: int,
        model: str,
        prompt_tokens: int,
        continuous_usage: bool,
    ) -> None:
        self._head = (
            b'data: {"id":'
            + _encode(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + _encode(model)
            + b',"choices":['
        )
        self._prompt_tokens = prompt_tokens
        self._continuous = continuous_usage

    def _usage(self, completion_tokens: int) -> bytes:
        prompt = self._prompt_tokens
        return b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            prompt,
            prompt + completion_tokens,
            completion_tokens,
        )

    def role(self, index: int) -> bytes:
        """The first chunk of a choice, sent once the first token exists."""
        usage = b"," + self._usage(0) if self._continuous else b""
        return (
            self._head + b'{"index":%d,"delta":{"role":"assistant","content":""},"logprobs":null,'
            b'"finish_reason":null}]'
            % index
            + usage
            + b',"prompt_token_ids":null,"prompt_text":null}\n\n'
        )

    def token(self, index: int, text: str, produced: int) -> bytes:
        """A token of choice ``index`` that is not its last and has no logprobs: the chunk
        nearly every streamed token is, so it is built in one expression."""
        usage = b"," + self._usage(produced) if self._continuous else b""
        return (
            self._head
            + b'{"index":%d,"delta":{"content":' % index
            + _encode(text)
            + b'},"logprobs":null,"finish_reason":null,"token_ids":null}]'
            + usage
            + b"}\n\n"
        )

    def content(
        self,
        index: int,
        text: str,
        *,
        produced: int,
        finish_reason: str | None = None,
        stop_reason: str | None = None,
        logprobs: bytes | None = None,
    ) -> bytes:
        """One token of choice ``index``; the last one carries ``finish_reason``.

        ``produced`` is the choice's token count so far, used by ``continuous_usage_stats``;
        ``logprobs`` the token's encoded ``{"content": [...]}`` when they were asked for.
        """
        return self._choice(
            index,
            b'{"content":' + _encode(text) + b"}",
            produced=produced,
            finish_reason=finish_reason,
            stop_reason=stop_reason,
            logprobs=logprobs,
        )

    def tool_call_start(self, index: int, call: int, call_id: str, name: str) -> bytes:
        """The first delta of tool call ``call`` of choice ``index``: its id, type and name,
        sent once (vLLM's ``DeltaToolCall``), with empty arguments."""
        delta = (
            b'{"tool_calls":[{"id":'
            + _encode(call_id)
            + b',"type":"function","index":%d,"function":{"name":' % call
            + _encode(name)
            + b',"arguments":""}}]}'
        )
        return self._choice(index, delta, produced=0)

    def tool_arguments(
        self,
        index: int,
        call: int,
        text: str,
        *,
        produced: int,
        finish_reason: str | None = None,
        stop_reason: str | None = None,
        logprobs: bytes | None = None,
    ) -> bytes:
        """One fragment (a token) of tool call ``call``'s arguments, as :meth:`content`."""
        delta = (
            b'{"tool_calls":[{"index":%d,"function":{"arguments":' % call + _encode(text) + b"}}]}"
        )
        return self._choice(
            index,
            delta,
            produced=produced,
            finish_reason=finish_reason,
            stop_reason=stop_reason,
            logprobs=logprobs,
        )

    def _choice(
        self,
        index: int,
        delta: bytes,
        *,
        produced: int,
        finish_reason: str | None = None,
        stop_reason: str | None = None,
        logprobs: bytes | None = None,
    ) -> bytes:
        if finish_reason is None:
            tail = b'"finish_reason":null,"token_ids":null}]'
        else:
            tail = (
                b'"finish_reason":'
                + _encode(finish_reason)
                + b',"stop_reason":'
                + _encode(stop_reason)
                + b',"token_ids":null}]'
            )
        usage = b"," + self._usage(produced) if self._continuous else b""
        return (
            self._head
            + b'{"index":%d,"delta":' % index
            + delta
            + (b',"logprobs":null,' if logprobs is None else b',"logprobs":' + logprobs + b",")
            + tail
            + usage
            + b"}\n\n"
        )

    def usage(self, completion_tokens: int) -> bytes:
        """The ``include_usage`` chunk: no choices, the totals of every choice."""
        return self._head + b"]," + self._usage(completion_tokens) + b"}\n\n"
