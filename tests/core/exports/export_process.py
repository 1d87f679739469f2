"""An export in a process of its own, slowed down so a test can kill it mid-write.

    python -m tests.core.exports.export_process DATABASE_URL DESTINATION FORMAT

Each chunk is written, then reported on stdout (``chunk N``) and followed by a pause, so
the test can kill the run mid-write, far from its commit.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from functions.core.exports import writers
from functions.core.exports.schemas import ExportRequest
from functions.core.exports.service import Tuning, export_history
from functions.core.exports.source import Chunk
from functions.core.runtime import open_runtime
from functions.core.settings import load_settings


def slowly(write: Callable[[writers.Writer, Chunk], None]) -> Callable[..., None]:
    def slow(self: writers.Writer, chunk: Chunk) -> None:
        write(self, chunk)
        print(f"chunk {self.rows}", flush=True)
        time.sleep(0.05)

    return slow


async def main(url: str, destination: str, fmt: str) -> None:
    for writer in writers.WRITERS.values():
        writer.write = slowly(writer.write)  # type: ignore[method-assign]
    settings = load_settings({"SWITCHBOARD_DATABASE_URL": url}, dotenv=None)
    async with open_runtime(settings, use_llm=False, configure_logs=False):
        await export_history(
            ExportRequest(destination=destination, format=fmt),  # type: ignore[arg-type]
            tuning=Tuning(scan_rows=50, batch_rows=10),
        )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
