"""Replay: stored conversations asked again of another configuration version, turn by turn.

- ``sources``: a conversation from the database, or from an export file of the export flow.
- ``service``: faithful and rollout replays, saved or not, one or many at a time.
- ``diff``: the word-level similarity and diff of two replies.

Used by notebooks, flows and the CLI; the prompt is the chat send path's own rule.
"""
