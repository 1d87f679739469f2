"""PostgreSQL only: ``switchboard_begin_exchange``, the first half of a send in one round trip.

It does what ``functions.core.messages.service.begin_exchange`` does step by step on
SQLite: lock the conversation and take two sequence numbers, resolve the config, refuse
while the previous reply is pending (retire it if its process died), store the user
message and a pending reply, and return the config and the history. Inside PL/pgSQL each
statement sees what committed before it, so the busy check after the row lock is sound.
Failures raise ``switchboard:<reason>``, which undoes the whole call.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-26T05:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "PostgreSQL function switchboard_begin_exchange (one round trip per send)"

CREATE = """
CREATE OR REPLACE FUNCTION switchboard_begin_exchange(
    p_conversation uuid, p_owner uuid, p_content text, p_user_id uuid, p_reply_id uuid,
    p_now timestamptz, p_stale_before timestamptz
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    v_seq integer;
    v_config_name varchar;
    v_config llm_config;
    v_prev record;
    v_history jsonb;
BEGIN
    UPDATE conversation SET last_seq = last_seq + 2, updated_at = p_now
     WHERE id = p_conversation AND owner_key = p_owner
    RETURNING last_seq, config_name INTO v_seq, v_config_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'switchboard:not_found';
    END IF;

    IF v_config_name IS NULL THEN
        SELECT * INTO v_config FROM llm_config WHERE is_default LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'switchboard:no_default_config';
        END IF;
    ELSE
        SELECT * INTO v_config FROM llm_config
         WHERE name = v_config_name ORDER BY version DESC LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'switchboard:config_not_found:%', v_config_name;
        END IF;
        IF v_config.archived_at IS NOT NULL THEN
            RAISE EXCEPTION 'switchboard:config_archived:%', v_config_name;
        END IF;
    END IF;

    -- Sends are serialised, so only the previous reply can still be pending.
    SELECT id, status, created_at INTO v_prev FROM message
     WHERE conversation = p_conversation AND seq = v_seq - 2;
    IF FOUND AND v_prev.status = 'pending' THEN
        IF v_prev.created_at > p_stale_before THEN
            RAISE EXCEPTION 'switchboard:busy';
        END IF;
        UPDATE message SET status = 'failed', error_code = 'interrupted',
               error_message = 'the process generating this reply stopped', completed_at = p_now
         WHERE id = v_prev.id;
    END IF;

    INSERT INTO message (id, conversation, seq, role, content, status, llm_config, model,
                         created_at, completed_at)
    VALUES (p_user_id, p_conversation, v_seq - 1, 'user', p_content, 'complete', NULL, NULL,
            p_now, p_now),
           (p_reply_id, p_conversation, v_seq, 'assistant', '', 'pending', v_config.id,
            v_config.model, p_now, NULL);

    SELECT coalesce(jsonb_agg(jsonb_build_object('role', h.role, 'content', h.content)
                              ORDER BY h.seq), '[]'::jsonb)
      INTO v_history
      FROM (SELECT seq, role, content FROM message
             WHERE conversation = p_conversation AND seq < v_seq - 1 AND status = 'complete'
             ORDER BY seq DESC LIMIT v_config.history_window) h;

    RETURN jsonb_build_object('last_seq', v_seq, 'config', to_jsonb(v_config),
                              'history', v_history);
END
$fn$
"""

DROP = "DROP FUNCTION IF EXISTS switchboard_begin_exchange(uuid, uuid, text, uuid, uuid, timestamptz, timestamptz)"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="core", description=DESCRIPTION)

    async def create_function() -> None:
        engine = engine_finder()
        assert engine is not None
        if engine.engine_type == "postgres":
            await engine.run_ddl(CREATE)

    async def drop_function() -> None:
        engine = engine_finder()
        assert engine is not None
        if engine.engine_type == "postgres":
            await engine.run_ddl(DROP)

    manager.add_raw(create_function)
    manager.add_raw_backwards(drop_function)
    return manager
