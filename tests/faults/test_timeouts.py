"""A hung model on a non-streamed send: it fails at the first-token timeout, not the total."""

from __future__ import annotations

import time

from tests.faults.conftest import (
    FIRST_TOKEN_TIMEOUT_S,
    HANG_MODEL,
    SLOW_MODEL,
    TOTAL_TIMEOUT_S,
    Faults,
    json_send,
    new_conversation,
    stream_send,
)
from tests.support.timing import scaled


async def test_a_hung_model_fails_a_non_streamed_send_at_the_first_token_timeout(
    faults: Faults,
) -> None:
    gateway = faults.gateway()
    await faults.configure(gateway)
    async with faults.client(gateway) as client:
        conversation = await new_conversation(client, config=HANG_MODEL)
        started = time.monotonic()
        response = await json_send(client, conversation, "hello?")
        failed_after_s = time.monotonic() - started
        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error["code"] == "llm_timeout"
        assert error["details"]["assistant_message_id"]
        rows = await faults.assert_paired(conversation, ["hello?"])
        assert (rows[1]["status"], rows[1]["error_code"]) == ("failed", "llm_timeout")

        # The conversation takes the next send at once (its `message` event is the claim).
        again = await stream_send(client, conversation, "still there?")
        assert again.status == 200, again.body
        assert again.names[0] == "message"
        assert again.ended_cleanly
        assert again.last[1]["error"]["code"] == "llm_timeout"
        moved = await client.patch(f"/v1/conversations/{conversation}", json={"config": SLOW_MODEL})
        assert moved.status_code == 200, moved.text
        answered = await json_send(client, conversation, "and now?", max_tokens=3)
        assert answered.status_code == 201, answered.text
    print(
        f"\nhung model, non-streamed: 504 after {failed_after_s:.2f} s "
        f"(first-token timeout {FIRST_TOKEN_TIMEOUT_S} s, total {TOTAL_TIMEOUT_S} s); "
        f"next send accepted after {again.accepted_after_s:.3f} s"
    )
    # The first-token timeout ended it, not the total one (30 s); the next send is taken
    # at once, not after a lock's or a timeout's wait.
    assert FIRST_TOKEN_TIMEOUT_S <= failed_after_s < FIRST_TOKEN_TIMEOUT_S + scaled(3)
    assert (again.accepted_after_s or 0) < scaled(2)
    rows = await faults.assert_paired(conversation, ["hello?", "still there?", "and now?"])
    assert [row["status"] for row in rows[1::2]] == ["failed", "failed", "complete"]
    assert await faults.pending() == []
