"""Piccolo's configuration module (``PICCOLO_CONF``) for a running Switchboard process.

Importing it reads nothing and creates nothing: ``DB`` is set by
:func:`functions.core.db.engine.use_engine` when the runtime opens the database. The root
``piccolo_conf.py`` is the one module that builds an engine from the settings at import,
for Piccolo's own command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from piccolo.conf.apps import AppRegistry

if TYPE_CHECKING:
    from piccolo.engine.base import Engine

DB: Engine[Any] | None = None

APP_REGISTRY = AppRegistry(apps=["functions.core.db.piccolo_app"])
