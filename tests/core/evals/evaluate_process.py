"""``python -m tests.core.evals.evaluate_process RUN_ID DATASET``: run an evaluation run in a
process of its own (settings from ``SWITCHBOARD_*``), for tests that kill it mid-run."""

from __future__ import annotations

import asyncio
import sys
import uuid

from functions.core.evals import service
from functions.core.evals.datasets import load_dataset
from functions.core.evals.runner import Evaluator
from functions.core.runtime import open_runtime
from functions.core.settings import load_settings


async def main(run_id: uuid.UUID, dataset_path: str) -> None:
    dataset = load_dataset(dataset_path)
    async with open_runtime(load_settings(dotenv=None)) as runtime:
        lease = runtime.exchanges.lease
        run = await service.claim_run(run_id, lease)
        await Evaluator(runtime.chat, run, dataset).evaluate()
        await service.finish_run(run_id, "complete")


if __name__ == "__main__":
    asyncio.run(main(uuid.UUID(sys.argv[1]), sys.argv[2]))
