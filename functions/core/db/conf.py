"""Piccolo's configuration module (``PICCOLO_CONF``) for a running Switchboard process.

Importing it reads nothing and creates nothing: ``DB`` is the engine every table holds
(:data:`functions.core.db.engine.ENGINE`), which runs each query on the engine of the
runtime open in the current context (or the process default), so Piccolo's own lookups
(migrations, ``engine_finder``) follow the runtime too. The root ``piccolo_conf.py`` is the
one module that builds an engine from the settings at import, for Piccolo's own command
line.
"""

from __future__ import annotations

from piccolo.conf.apps import AppRegistry

from functions.core.db.engine import ENGINE

DB = ENGINE

APP_REGISTRY = AppRegistry(apps=["functions.core.db.piccolo_app"])
