"""The claim is one rule on two engines: PostgreSQL's function and SQLite's statements.

Every scenario runs on both engines from the same starting state, with the same ids and
times, and the whole stored state afterwards (conversations and messages, every column)
plus what the call returned or raised must be identical. Ids and times are normalised to
their order of appearance, so the comparison is exact without depending on random ids.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from functions.core.chat.exchanges import Exchanges
from functions.core.chat.schemas import SendRequest
from functions.core.chat.targets import Target
from functions.core.configs import service as configs
from functions.core.configs.schemas import LLMConfigCreate
from functions.core.conversations import service as conversations
from functions.core.conversations.schemas import ConversationCreate
from functions.core.db.engine import use_engine
from functions.core.db.sql import fetch
from functions.core.keys import service as keys
from functions.core.keys.schemas import UNRESTRICTED, ApiKeyCreate
from functions.core.liveness.service import Lease
from functions.core.messages import service as messages
from functions.core.messages.claim import ClaimRequest, claim
from functions.core.messages.schemas import ReplyOutcome, Turn

UUID_IN_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@dataclass
class World:
    owner: uuid.UUID
    stranger: uuid.UUID
    conversation: uuid.UUID
    config_id: uuid.UUID
    config_name: str | None
    ids: Callable[[], uuid.UUID]
    lease: Lease


def deterministic_ids() -> Callable[[], uuid.UUID]:
    counter = iter(range(1, 10_000))
    return lambda: uuid.UUID(int=next(counter))


async def world(*, config: dict[str, Any] | None = None, default: bool = True) -> World:
    owner = (await keys.create_key(ApiKeyCreate(name="owner"))).id
    stranger = (await keys.create_key(ApiKeyCreate(name="stranger"))).id
    created = await configs.create_config(
        msgspec.convert(
            {"name": "cfg", "model": "m", "is_default": default, **(config or {})},
            LLMConfigCreate,
        )
    )
    conv = await conversations.create_conversation(owner, ConversationCreate(config="cfg"))
    lease = Lease(ttl_s=60)
    await lease.renew()
    return World(owner, stranger, conv.id, created.id, conv.config, deterministic_ids(), lease)


async def claim_turns(
    w: World,
    turns: list[Turn],
    *,
    at: datetime = T0,
    stale_before: datetime | None = None,
    bound: timedelta = timedelta(minutes=15),
    history_limit: int | None = None,
    owner: uuid.UUID | None = None,
    config_name: str | None = "",
    epoch: int | None = None,
    chain: list[bytes] | None = None,
    expect_last_seq: int | None = None,
    fork: tuple[uuid.UUID, uuid.UUID] | None = None,
) -> Any:
    claimed = await claim(
        ClaimRequest(
            owner=owner or w.owner,
            conversation_id=w.conversation,
            config_name=w.config_name if config_name == "" else config_name,
            config_epoch=await configs.read_epoch() if epoch is None else epoch,
            turns=turns,
            turn_ids=[w.ids() for _ in turns],
            reply_id=w.ids(),
            reply_config_id=w.config_id,
            reply_model="m",
            instance_id=w.lease.instance_id,
            now=at,
            stale_after=at + bound,
            stale_before=stale_before or at - bound,
            history_limit=history_limit,
            chain=chain,
            expect_last_seq=expect_last_seq,
            forked_from_conversation=fork[0] if fork else None,
            forked_from_message=fork[1] if fork else None,
        )
    )
    return msgspec.to_builtins(claimed)


def user(text: str) -> Turn:
    return Turn(role="user", content=text)


async def complete_last(w: World, text: str) -> None:
    rows = await fetch(
        "SELECT id FROM message WHERE conversation = {} AND status = 'pending'", w.conversation
    )
    for row in rows:
        await messages.finish_exchange(
            row["id"], ReplyOutcome(status="complete", content=text, model="m")
        )


async def new_conversation(w: World) -> Any:
    return await claim_turns(w, [user("hello 안녕 👋")])


async def second_send_sees_history(w: World) -> Any:
    await claim_turns(w, [user("one")])
    await complete_last(w, "uno")
    return await claim_turns(w, [user("two")], at=T0 + timedelta(seconds=1))


async def busy_while_pending(w: World) -> Any:
    await claim_turns(w, [user("first")])
    return await claim_turns(w, [user("second")], at=T0 + timedelta(seconds=1))


async def stale_pending_is_retired(w: World) -> Any:
    await claim_turns(w, [user("first")])
    later = T0 + timedelta(hours=1)
    return await claim_turns(w, [user("second")], at=later, stale_before=T0 + timedelta(seconds=1))


async def the_owners_bound_not_the_callers(w: World) -> Any:
    # The first reply's process allows it 15 minutes; a caller whose own bound is 1
    # minute must still wait for it 5 minutes in.
    await claim_turns(w, [user("first")])
    later = T0 + timedelta(minutes=5)
    return await claim_turns(w, [user("second")], at=later, bound=timedelta(minutes=1))


async def a_reply_without_a_bound_is_judged_by_the_callers(w: World) -> Any:
    # Stored before replies carried their bound (or by switchboard_claim_v1).
    await claim_turns(w, [user("first")])
    await fetch("UPDATE message SET stale_after = NULL WHERE status = 'pending'")
    later = T0 + timedelta(minutes=5)
    return await claim_turns(w, [user("second")], at=later, bound=timedelta(minutes=1))


async def many_structured_turns(w: World) -> Any:
    turns = [
        Turn(role="system", content="Be brief."),
        Turn(role="developer", content="Answer in JSON."),
        Turn(
            role="user",
            content="What is in this picture? 그림",
            parts=[
                {"type": "text", "text": "What is in this picture? 그림"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
            name="alice",
        ),
        Turn(
            role="assistant",
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "🐱"}'},
                }
            ],
        ),
        Turn(role="tool", content='{"answer": "a cat 🐱"}', tool_call_id="call_1"),
    ]
    await claim_turns(w, turns)
    await complete_last(w, "A cat.")
    return await claim_turns(w, [user("thanks")], at=T0 + timedelta(seconds=1))


async def history_limit_reads_the_newest(w: World) -> Any:
    for i in range(4):
        await claim_turns(w, [user(f"q{i}")], at=T0 + timedelta(seconds=i))
        await complete_last(w, f"a{i}")
    return await claim_turns(w, [user("last")], at=T0 + timedelta(seconds=9), history_limit=3)


async def exact_mode_reads_nothing(w: World) -> Any:
    await claim_turns(w, [user("one")])
    await complete_last(w, "uno")
    return await claim_turns(w, [user("two")], at=T0 + timedelta(seconds=1), history_limit=0)


def hashes(*labels: str) -> list[bytes]:
    """Stand-in chain hashes (the claim stores what it is given)."""
    return [label.encode().ljust(16, b".") for label in labels]


async def threaded_append_stores_the_hashes(w: World) -> Any:
    await claim_turns(w, [user("one")], chain=hashes("h1"))
    await complete_last(w, "uno")
    return await claim_turns(
        w,
        [user("two"), user("three")],
        at=T0 + timedelta(seconds=1),
        chain=hashes("h3", "h4"),
        expect_last_seq=2,
    )


async def a_moved_thread_is_refused_and_stores_nothing(w: World) -> Any:
    await claim_turns(w, [user("one")], chain=hashes("h1"))
    await complete_last(w, "uno")
    # Located when the conversation was empty: it moved on since.
    return await claim_turns(
        w, [user("two")], at=T0 + timedelta(seconds=1), chain=hashes("h3"), expect_last_seq=0
    )


async def a_moved_thread_is_refused_before_the_busy_check(w: World) -> Any:
    await claim_turns(w, [user("one")])
    return await claim_turns(w, [user("two")], at=T0 + timedelta(seconds=1), expect_last_seq=0)


async def a_branch_records_its_fork_point_once(w: World) -> Any:
    fork = (w.ids(), w.ids())
    await claim_turns(w, [user("one")], chain=hashes("h1"), fork=fork)
    await complete_last(w, "uno")
    # A later claim naming another fork point leaves the first.
    claimed = await claim_turns(
        w, [user("two")], at=T0 + timedelta(seconds=1), fork=(w.ids(), w.ids())
    )
    return {"claim": claimed, "fork": list(fork)}


async def another_owner_is_not_found(w: World) -> Any:
    return await claim_turns(w, [user("mine?")], owner=w.stranger)


async def changed_config_name_is_a_stale_view(w: World) -> Any:
    return await claim_turns(w, [user("hi")], config_name="other")


async def moved_epoch_is_a_stale_view(w: World) -> Any:
    return await claim_turns(w, [user("hi")], epoch=(await configs.read_epoch()) - 1)


async def begin_with(w: World, target: Target | None = None) -> Any:
    request = SendRequest(
        access=UNRESTRICTED,
        owner=w.owner,
        conversation_id=w.conversation,
        turns=[user("hi")],
        target=target or Target(),
    )
    exchange = await Exchanges(busy_timeout_s=0).begin(request)
    return {"prompt": msgspec.to_builtins(exchange.prompt), "model": exchange.model}


async def archived_config_is_refused(w: World) -> Any:
    await configs.archive_config("cfg")
    return await begin_with(w)


async def missing_config_is_refused(w: World) -> Any:
    return await begin_with(w, Target(config="nope"))


async def no_default_is_refused(w: World) -> Any:
    bare = await conversations.create_conversation(w.owner, ConversationCreate())
    await configs.archive_config("cfg")  # the default goes with it
    w.conversation, w.config_name = bare.id, None
    return await begin_with(w)


async def window_and_system_prompt(w: World) -> Any:
    for text in ["a", "b", "c"]:
        await begin_with(w)
        await complete_last(w, text.upper())
    return await begin_with(w)


async def pinned_version_and_bare_model(w: World) -> Any:
    await configs.update_config(
        "cfg", msgspec.convert({"model": "m2", "is_default": True}, configs.LLMConfigSpec)
    )
    pinned = await begin_with(w, Target(config="cfg", version=1))
    await complete_last(w, "v1")
    bare = await begin_with(w, Target(model="served-model"))
    return {"pinned": pinned, "bare": bare}


Scenario = Callable[[World], Awaitable[Any]]
SCENARIOS: dict[str, tuple[Scenario, dict[str, Any]]] = {
    "new": (new_conversation, {}),
    "history": (second_send_sees_history, {}),
    "busy": (busy_while_pending, {}),
    "stale pending": (stale_pending_is_retired, {}),
    "owner's bound": (the_owners_bound_not_the_callers, {}),
    "no bound stored": (a_reply_without_a_bound_is_judged_by_the_callers, {}),
    "N structured turns": (many_structured_turns, {}),
    "history limit": (history_limit_reads_the_newest, {}),
    "exact": (exact_mode_reads_nothing, {}),
    "other owner": (another_owner_is_not_found, {}),
    "threaded append": (threaded_append_stores_the_hashes, {}),
    "thread moved": (a_moved_thread_is_refused_and_stores_nothing, {}),
    "thread moved, pending": (a_moved_thread_is_refused_before_the_busy_check, {}),
    "fork point": (a_branch_records_its_fork_point_once, {}),
    "stale config name": (changed_config_name_is_a_stale_view, {}),
    "stale epoch": (moved_epoch_is_a_stale_view, {}),
    "archived config": (archived_config_is_refused, {}),
    "missing config": (missing_config_is_refused, {}),
    "no default": (no_default_is_refused, {}),
    "window": (window_and_system_prompt, {"config": {"history_window": 3, "system_prompt": "S"}}),
    "pinned and bare": (pinned_version_and_bare_model, {}),
}


class Normaliser:
    """Replaces ids and times by their order of first appearance; decodes JSON text."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def _token(self, kind: str, value: str) -> str:
        return self.seen.setdefault(value, f"{kind}{len(self.seen)}")

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: self(item) for key, item in sorted(value.items())}
        if isinstance(value, list | tuple):
            return [self(item) for item in value]
        if isinstance(value, datetime):
            return self._token("time", value.astimezone(UTC).isoformat())
        if isinstance(value, uuid.UUID):
            return self._token("id", str(value))
        if isinstance(value, str):
            try:
                return self._token("id", str(uuid.UUID(value)))
            except ValueError:
                pass
            if value[:1] in "[{":
                try:
                    return self(msgspec.json.decode(value))
                except msgspec.DecodeError:
                    pass
            return UUID_IN_TEXT.sub(lambda found: self._token("id", found[0]), value)
        return value


async def stored_state() -> Any:
    conversations_rows = await fetch(
        "SELECT id, owner_key, config_name, title, metadata, last_seq, updated_at, "
        "forked_from_conversation_id, forked_from_message_id "
        "FROM conversation ORDER BY last_seq, title"
    )
    message_rows = await fetch("SELECT * FROM message ORDER BY conversation, seq")
    for row in message_rows:
        # The engine's own change order (a transaction id, a counter): exports' business.
        del row["change_seq"]
    # Conversation creation times come from the services' clocks, not the scenario's.
    return {"conversations": conversations_rows, "messages": message_rows}


async def run_on(engine: Engine[Any], name: str) -> Any:
    scenario, setup = SCENARIOS[name]
    use_engine(engine)
    async with engine.transaction() as transaction:
        w = await world(**setup)
        try:
            returned: Any = {"returned": await scenario(w)}
        except Exception as exc:
            returned = {
                "raised": type(exc).__name__,
                "code": getattr(exc, "code", None),
                "message": str(exc),
            }
        state = await stored_state()
        await transaction.rollback()
    normalise = Normaliser()
    # Live-clock columns differ between runs by nature; scenario times are compared.
    for row in state["conversations"]:
        if row["updated_at"] is not None and row["updated_at"].year != 2026:
            row["updated_at"] = "live"
    return normalise({"outcome": returned, "state": state})


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_both_engines_store_the_same(
    name: str, pg_engine: Engine[Any], sqlite_engine: Engine[Any]
) -> None:
    on_postgres = await run_on(pg_engine, name)
    on_sqlite = await run_on(sqlite_engine, name)
    assert on_postgres == on_sqlite
    # And the scenario did what its name says (the parity would hold for two wrong ones).
    outcome = on_postgres["outcome"]
    expected_error = {
        "busy": "conversation_busy",
        "owner's bound": "conversation_busy",
        "other owner": "not_found",
        "thread moved": "thread_moved",
        "thread moved, pending": "thread_moved",
        "stale config name": "stale_configuration_view",
        "stale epoch": "stale_configuration_view",
        "archived config": "validation_error",
        "missing config": "not_found",
        "no default": "validation_error",
    }.get(name)
    if expected_error:
        assert outcome.get("code") == expected_error, outcome
    else:
        assert "returned" in outcome, outcome
    state = on_postgres["state"]
    if name == "thread moved":
        # Refused under the lock: nothing of the send stored, the sequence untouched.
        assert [m["seq"] for m in state["messages"]] == [1, 2]
        assert state["conversations"][0]["last_seq"] == 2
    if name == "threaded append":
        assert [m["chain_hash"] for m in state["messages"]] == [
            *hashes("h1"),
            None,
            *hashes("h3", "h4"),
            None,
        ]
    if name == "fork point":
        [conversation] = state["conversations"]
        assert (
            conversation["forked_from_conversation_id"],
            conversation["forked_from_message_id"],
        ) == tuple(outcome["returned"]["fork"])
