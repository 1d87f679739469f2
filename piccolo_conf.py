"""Piccolo's conventional entry point, for the ``piccolo`` command run from the repository.

The one module that reads the settings at import: Piccolo's own CLI expects ``DB`` here.
Switchboard's processes never import it; they open the database through
``functions.core.runtime`` (which points Piccolo at ``functions.core.db.conf``).
"""

from functions.core.db.conf import APP_REGISTRY
from functions.core.db.engine import engine_from_url
from functions.core.settings import load_settings

DB = engine_from_url(load_settings().database_url)

__all__ = ["APP_REGISTRY", "DB"]
