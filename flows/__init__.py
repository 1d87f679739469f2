"""Switchboard's scheduled work as Prefect flows: thin over the same core services.

Each flow opens what it needs with ``functions.core.runtime.open_runtime`` (settings, the
database, the LLM client), calls core services through tasks with explicit retries and
timeouts, and reports what it did as a Prefect artifact. Only this package imports
Prefect; ``functions/`` never does.

- ``health_check``: probe every upstream, record one verdict each (steers routing in
  every serving process), prune old verdicts.
- ``maintenance``: retire replies whose process died, prune expired leases, idempotency
  keys and health verdicts.
- ``deployments``: the flows as deployments (schedules, tags, limits); ``cli``: the
  ``switchboard flows`` command group; ``catalog``: the flows and their parameters as
  ``catalog.json`` holds them, for listing and help without importing Prefect.
"""
