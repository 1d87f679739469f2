"""Python scorers for the tests, named by dotted path as a dataset would name them."""

from __future__ import annotations

import asyncio
from typing import Any

from functions.core.evals.schemas import DatasetItem


def has_words(output: str, item: DatasetItem, minimum: int = 3) -> bool:
    return len(output.split()) >= minimum


async def length_ratio(output: str, item: DatasetItem, longest: int = 100) -> float:
    await asyncio.sleep(0)
    return min(1.0, len(output) / longest)


def graded(output: str, item: DatasetItem) -> dict[str, Any]:
    return {"score": 0.25, "detail": f"{len(output)} characters"}


def explodes(output: str, item: DatasetItem) -> bool:
    raise RuntimeError("the scorer broke")


def wrong_type(output: str, item: DatasetItem) -> str:
    return "yes"


NOT_CALLABLE = 42
