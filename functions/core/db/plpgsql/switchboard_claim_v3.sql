-- switchboard_claim_v3: the atomic half of a send, in one round trip (PostgreSQL).
--
-- Only what must happen under the conversation's row lock lives here; which configuration,
-- which history and what counts as stale are decided in Python (functions.core.chat) and
-- passed in. SQLite runs the same steps one statement at a time
-- (functions.core.messages.claim); tests/core/messages/test_claim_parity.py holds the two
-- to the same results. Released files never change: a new behaviour is a new _vN file
-- installed by a new migration.
--
-- Steps: lock the conversation and take sequence numbers for the new turns and the reply
-- (a new branch records its fork point here); for a threaded send, refuse if the
-- conversation moved on past the message the caller located; check the caller's view (the conversation's config name, the configuration epoch);
-- refuse while the previous reply is being generated (pending, its process's lease alive,
-- before its own stale_after), else retire it as interrupted; read the newest
-- p_history_limit stored messages (all of them when NULL); insert the turns, a pending
-- reply that carries its own stale_after, and the send's idempotency key, if it has one.
--
-- v2 over v1: how long a reply may stay pending is its owner's to say (its timeouts), not
-- the caller's: each reply stores p_stale_after, and the previous reply is judged by its
-- own. p_stale_before applies only to a reply stored without one (by v1, before it).
--
-- v3 over v2 (threading, functions.core.threads): each turn of p_turns may carry its
-- chain hash (hex, stored as bytea in message.chain_hash); p_expect_last_seq, when not
-- NULL, must be the conversation's last seq before this send, else SB410 and nothing is
-- stored (the caller branches); p_fork_conversation/p_fork_message set the conversation's
-- forked_from_* once. v2 stays installed for processes of the previous release.
--
-- Errors carry their own SQLSTATE, mapped by code in Python:
--   SB404 no such conversation for this owner   SB409 the previous reply is pending
--   SB410 the conversation moved on past p_expect_last_seq
--   SB412 the caller's view of the conversation's configuration is out of date
--   23505 (unique_violation) on idempotency_key: the same key won by another send
CREATE OR REPLACE FUNCTION switchboard_claim_v3(
    p_conversation uuid, p_owner uuid, p_config_name varchar, p_config_epoch bigint,
    p_turns jsonb, p_reply_id uuid, p_reply_config uuid, p_reply_model varchar,
    p_instance uuid, p_now timestamptz, p_stale_before timestamptz, p_retired_message text,
    p_history_limit integer, p_idempotency_key varchar, p_request_hash varchar,
    p_stale_after timestamptz, p_expect_last_seq integer, p_fork_conversation uuid,
    p_fork_message uuid
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    v_count integer := jsonb_array_length(p_turns);
    v_last integer;
    v_config_name varchar;
    v_prev record;
    v_history jsonb;
BEGIN
    UPDATE conversation SET last_seq = last_seq + v_count + 1, updated_at = p_now,
           forked_from_conversation_id = coalesce(forked_from_conversation_id,
                                                  p_fork_conversation),
           forked_from_message_id = coalesce(forked_from_message_id, p_fork_message)
     WHERE id = p_conversation AND owner_key = p_owner
    RETURNING last_seq - v_count - 1, config_name INTO v_last, v_config_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such conversation' USING ERRCODE = 'SB404';
    END IF;

    -- Checked before anything waits: a send that lost the race branches at once.
    IF p_expect_last_seq IS NOT NULL AND v_last <> p_expect_last_seq THEN
        RAISE EXCEPTION 'the conversation moved on' USING ERRCODE = 'SB410';
    END IF;

    IF v_config_name IS DISTINCT FROM p_config_name
       OR coalesce((SELECT epoch FROM config_epoch WHERE id = 1), 0) <> p_config_epoch THEN
        RAISE EXCEPTION 'configuration view out of date' USING ERRCODE = 'SB412';
    END IF;

    -- Sends are serialised, so only the newest message can be a pending reply.
    SELECT id, created_at, owner_instance, stale_after INTO v_prev FROM message
     WHERE conversation = p_conversation AND seq = v_last AND status = 'pending';
    IF FOUND THEN
        IF coalesce(v_prev.stale_after > p_now, v_prev.created_at > p_stale_before)
           AND (v_prev.owner_instance IS NULL OR EXISTS (
               SELECT 1 FROM process_lease
                WHERE id = v_prev.owner_instance AND expires_at > p_now)) THEN
            RAISE EXCEPTION 'a reply is pending' USING ERRCODE = 'SB409';
        END IF;
        UPDATE message SET status = 'failed', error_code = 'interrupted',
               error_message = p_retired_message, completed_at = p_now
         WHERE id = v_prev.id;
    END IF;

    SELECT coalesce(jsonb_agg(to_jsonb(h) ORDER BY h.seq), '[]'::jsonb) INTO v_history
      FROM (SELECT seq, role, content, content_parts, tool_calls, tool_call_id, name, status
              FROM message WHERE conversation = p_conversation AND seq <= v_last
             ORDER BY seq DESC LIMIT p_history_limit) h;

    INSERT INTO message (id, conversation, seq, role, content, content_parts, tool_calls,
                         tool_call_id, name, status, created_at, completed_at, chain_hash)
    SELECT t.id, p_conversation, v_last + t.i, t.role, t.content, t.content_parts,
           t.tool_calls, t.tool_call_id, t.name, 'complete', p_now, p_now,
           decode(t.chain_hash, 'hex')
      FROM jsonb_to_recordset(p_turns) AS t(i integer, id uuid, role varchar, content text,
           content_parts jsonb, tool_calls jsonb, tool_call_id varchar, name varchar,
           chain_hash text);

    INSERT INTO message (id, conversation, seq, role, content, status, llm_config, model,
                         owner_instance, created_at, stale_after)
    VALUES (p_reply_id, p_conversation, v_last + v_count + 1, 'assistant', '', 'pending',
            p_reply_config, p_reply_model, p_instance, p_now, p_stale_after);

    -- A unique violation here (23505) is another send with the same key winning the race.
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO idempotency_key (id, owner_key, key, request_hash, conversation, reply,
                                     created_at)
        VALUES (p_reply_id, p_owner, p_idempotency_key, p_request_hash, p_conversation,
                p_reply_id, p_now);
    END IF;

    RETURN jsonb_build_object('last_seq', v_last + v_count + 1, 'history', v_history);
END
$fn$
