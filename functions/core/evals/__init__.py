"""Evaluations: run a dataset through configurations, score the outputs, compare them.

- ``datasets``: JSONL items, checked whole before anything runs; ``history``: items from
  stored conversations (the prompt rule's history, the stored reply as expected).
- ``scorers``: exact match, contains, regex, JSON, JSON Schema, numeric, similarity, an LLM
  judge and any Python callable.
- ``runner``: bounded concurrency, retries, per-item timeouts, resume; every item goes
  through the one send path (``chat.service.ChatService``).
- ``service``: runs and results in ``eval_run`` / ``eval_result``.
- ``stats`` and ``report``: bootstrap intervals, paired tests, verdicts.

Imported by flows, the CLI and notebooks; never by a function app (it needs the
``flows`` extra: numpy, rapidfuzz, jsonschema).
"""
