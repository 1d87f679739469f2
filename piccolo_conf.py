"""Piccolo's conventional entry point; the real configuration lives in the package."""

from functions.core.db.conf import APP_REGISTRY, DB

__all__ = ["APP_REGISTRY", "DB"]
