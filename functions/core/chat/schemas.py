"""Sending a message and the events of a streamed reply."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from functions.core.chat.idempotency import Idempotency
from functions.core.chat.prompt import PromptMode
from functions.core.chat.targets import Target
from functions.core.configs.schemas import (
    SAMPLING_FIELDS,
    MaxTokens,
    Seed,
    StopList,
    Temperature,
    TopP,
)
from functions.core.keys.schemas import KeyAccess
from functions.core.llm.schemas import CompletionPrompt, UpstreamEvent
from functions.core.messages.schemas import MessageOut, Turn
from functions.core.schemas import Input, Output
from functions.core.threads.schemas import Thread

MAX_CONTENT_CHARS = 400_000


def message_chars_problem(text: str, limit: int) -> str | None:
    """What is wrong with a turn's text under SWITCHBOARD_MAX_MESSAGE_CHARS (``limit``), or
    None: the one rule for a turn wherever it comes from (a send, a dataset's item)."""
    if len(text) <= limit:
        return None
    return f"is {len(text)} characters; the limit is {limit} (SWITCHBOARD_MAX_MESSAGE_CHARS)"


class MessageSend(Input, kw_only=True):
    """The user's message; sampling fields override the conversation's config for this reply."""

    content: Annotated[
        str, Meta(min_length=1, max_length=MAX_CONTENT_CHARS, examples=["Summarise our Q3 plan."])
    ]
    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    stop: StopList | None = None
    seed: Seed | None = None

    def overrides(self) -> dict[str, Any]:
        return {
            name: value for name in SAMPLING_FIELDS if (value := getattr(self, name)) is not None
        }


class SendRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One send, from any door: what to store, what to ask, and who answers.

    - ``conversation_id``: where the turns are stored; None starts a new conversation of
      ``owner`` (titled ``title``).
    - ``turns``: the new turns, stored in order before the model is called (one user turn
      for chat; any OpenAI turns for the door).
    - ``prompt``: ``history`` sends the configuration's system prompt, the stored history
      and the new turns (chat); ``exact`` sends exactly the new turns (the door).
    - ``messages``: the whole prompt, when the door builds it from turns it does not store
      (a saved replay asks with the original conversation's history); None: by ``prompt``.
    - ``target``: a configuration (optionally a pinned version), a served model with no
      configuration, or by default the conversation's configuration.
    - ``sampling``: overrides of the configuration's sampling fields for this reply.
    - ``extra``: vLLM request fields passed through as they are (over the configuration's).
    - ``idempotency``: the client's ``Idempotency-Key`` and the hash of its request.
    - ``thread``: a threaded send (``threads.place``): the turns are stored with their
      chain hashes, appended only while the conversation has not moved on (else the send
      branches into a new conversation holding the whole history), and the reply's hash
      is written when it completes.
    - ``choices``: above 1 (a threaded send only), the first choice is the reply in
      ``conversation_id`` and each further one the reply of a branch of its own, forked
      from the new user turn (``functions.core.chat.choices``).
    """

    owner: uuid.UUID
    # What the sending key may use (its ``Principal.access``; ``UNRESTRICTED`` for an
    # operator's run): required, so no door can forget it.
    access: KeyAccess
    turns: list[Turn]
    conversation_id: uuid.UUID | None = None
    title: str = ""
    prompt: PromptMode = "history"
    messages: list[Turn] | None = None
    target: Target = Target()
    sampling: dict[str, Any] = msgspec.field(default_factory=dict)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    request_id: str | None = None
    # The same key and request again returns the first exchange (see ``idempotency``).
    idempotency: Idempotency | None = None
    thread: Thread | None = None
    # A legacy completion (the OpenAI door's ``/v1/completions``): its ``prompt`` as sent,
    # asked of vLLM's completions route instead of the turns (which are what is stored).
    completion_prompt: CompletionPrompt | None = None
    # ``history`` mode: the system prompt of this send only, instead of the configuration's
    # (a Responses' ``instructions``: never stored as a turn, never carried over).
    instructions: str | None = None
    # How many choices vLLM is asked for (OpenAI's ``n``): see ``functions.core.chat.choices``.
    choices: int = 1


class ChoiceStarted(Output, kw_only=True):
    """A further choice of an ``n`` > 1 send, stored in its branch: that branch's copy of
    the user turn and the choice's pending reply."""

    user_message: MessageOut
    assistant_message: MessageOut


# ``omit_defaults``: ``choices`` appears only for an ``n`` > 1 send (the OpenAI door's);
# every other send's events are as they always were.
class MessageStarted(Output, kw_only=True, tag="message", omit_defaults=True):
    """Both messages are stored; the reply is ``pending`` until ``done`` or ``error``.
    ``choices``: an ``n`` > 1 send's further choices, each stored in its branch."""

    user_message: MessageOut
    assistant_message: MessageOut
    choices: list[ChoiceStarted] = msgspec.field(default_factory=list)


class ReplyDelta(Output, kw_only=True, tag="delta"):
    text: str


class ReplyDone(Output, kw_only=True, tag="done", omit_defaults=True):
    """The stored, complete reply (content, usage, timings, config version); ``choices``:
    an ``n`` > 1 send's further choices as stored, in order."""

    message: MessageOut
    choices: list[MessageOut] = msgspec.field(default_factory=list)


class ReplyFailed(Output, kw_only=True, tag="error"):
    """The reply failed; ``message`` is the stored assistant message (status ``failed``),
    or null when the database did not take the outcome (``reply_not_recorded``)."""

    error: dict[str, Any]
    message: MessageOut | None


class UpstreamBatch(msgspec.Struct, kw_only=True):
    """vLLM's events of a send read whole (``ChatService.gather_raw``), as
    ``stream_raw`` would have yielded them one by one: given once, before the reply's
    ``done`` or ``error``."""

    events: list[UpstreamEvent]


ChatEvent = MessageStarted | ReplyDelta | ReplyDone | ReplyFailed


def event_name(event: ChatEvent) -> str:
    """The SSE event name: the Struct's tag (``message``, ``delta``, ``done``, ``error``)."""
    return str(type(event).__struct_config__.tag)
