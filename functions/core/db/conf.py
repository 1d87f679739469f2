"""Piccolo's configuration module (``PICCOLO_CONF``): the engine and the app registry.

The root ``piccolo_conf.py`` re-exports this so the ``piccolo`` command works from the
repository; the installed ``switchboard`` command points ``PICCOLO_CONF`` here, so it
works from any directory. ``DB`` is reassigned by :func:`functions.core.db.engine.use_engine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from piccolo.conf.apps import AppRegistry

from functions.core.db.engine import engine_from_url
from functions.core.settings import load_settings

if TYPE_CHECKING:
    from piccolo.engine.base import Engine

DB: Engine[Any] = engine_from_url(load_settings().database_url)

APP_REGISTRY = AppRegistry(apps=["functions.core.db.piccolo_app"])
