"""The evaluation flow's own cost per item, beside the same model calls made directly.

1,000 items against the simulator at concurrency 32, in one process, four ways:

  A. direct     ``LLMClient.collect_chat`` for each item (the model calls alone)
  B. core       ``functions.core.evals.runner.Evaluator``: each item through the send path
                (conversation, claim, reply recorded), scored, its result stored
  C. flow       ``flows.evaluate.evaluate``: B inside one Prefect task (what ships)
  D. per-item   the same as C with a Prefect task per item (the alternative not taken)

For each: items per second and this process's CPU per item (``time.process_time``: the
flow's own work; the simulator, PostgreSQL and Prefect's temporary API server are other
processes, and their CPU is reported apart where it is ours to start).

    scripts/with-postgres.sh .venv/bin/python -m bench.bench_evaluate
    ... -m bench.bench_evaluate --items 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).parent / "results"
SCORERS = [{"type": "contains", "value": "the"}, {"type": "similarity"}]


def write_dataset(path: Path, items: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for index in range(items):
            line = {
                "id": f"q{index:05}",
                "prompt": f"Question {index}: what does the gateway do? 서울 🚀",
                "expected": "the model answers quickly",
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


async def measure(name: str, items: int, body: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    await body()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    row = {
        "scenario": name,
        "items": items,
        "seconds": round(wall, 3),
        "items_per_s": round(items / wall, 1),
        "cpu_ms_per_item": round(1000 * cpu / items, 3),
    }
    print(
        f"  {name:10} {row['items_per_s']:8.1f} items/s  {row['cpu_ms_per_item']:7.3f} ms CPU/item"
    )
    return row


async def run(
    items: int, concurrency: int, tokens: int, database_url: str, sim_url: str
) -> list[dict[str, Any]]:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.evaluate import evaluate
    from functions.core.configs import service as configs
    from functions.core.configs.schemas import LLMConfigCreate
    from functions.core.evals import service
    from functions.core.evals.datasets import item_turns, load_dataset
    from functions.core.evals.runner import Evaluator, RunOptions, start_run
    from functions.core.llm.schemas import ChatMessage, ChatRequest
    from functions.core.runtime import open_runtime
    from functions.core.settings import load_settings

    folder = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    path = folder / "items.jsonl"
    write_dataset(path, items)
    dataset = load_dataset(path)
    import msgspec

    from functions.core.evals.schemas import ScorerSpec

    specs = msgspec.convert(SCORERS, list[ScorerSpec])
    options = RunOptions(concurrency=concurrency, retries=0)
    rows: list[dict[str, Any]] = []
    settings = load_settings(dotenv=None)
    async with open_runtime(settings, configure_logs=False) as runtime:
        await configs.create_config(
            msgspec.convert({"name": "bench", "model": "sim-model"}, LLMConfigCreate)
        )
        owner = await service.evaluation_owner()
        llm = runtime.require_llm()
        gate = asyncio.Semaphore(concurrency)

        async def direct() -> None:
            async def one(index: int) -> None:
                turns = item_turns(dataset.items[index])
                request = ChatRequest(
                    messages=[ChatMessage(role=t.role, content=t.content) for t in turns],
                    model="sim-model",
                )
                async with gate:
                    await llm.collect_chat(request)

            await asyncio.gather(*(one(i) for i in range(items)))

        # Warm both paths (connections, prepared statements, imports) before measuring.
        warm = await start_run(
            dataset, llm=llm, configs_named=["bench"], scorers=specs, options=options, owner=owner
        )
        evaluator = Evaluator(runtime.chat, warm, dataset)
        await evaluator._load_configs()
        await asyncio.gather(
            *(evaluator.evaluate_item(i, dataset.items[i], warm.configs[0]) for i in range(64))
        )
        await direct()

        rows.append(await measure("direct", items, direct))

        async def core() -> None:
            run = await start_run(
                dataset,
                llm=llm,
                configs_named=["bench"],
                scorers=specs,
                options=options,
                owner=owner,
            )
            await Evaluator(runtime.chat, run, dataset).evaluate()

        rows.append(await measure("core", items, core))

    # The flows open their own runtime (one per process at a time: it owns the metrics).

    async def flow_one_task() -> None:
        state = await evaluate(
            dataset=str(path),
            config=["bench"],
            scorer=[json.dumps(s) for s in SCORERS],
            concurrency=concurrency,
            retries=0,
            return_state=True,
        )
        assert state.is_completed(), state

    rows.append(await measure("flow", items, flow_one_task))

    @task(name="evaluate-item", cache_policy=NO_CACHE, persist_result=False, retries=0)
    async def evaluate_one(evaluator: Evaluator, index: int) -> None:
        result = await evaluator.evaluate_item(
            index, dataset.items[index], evaluator.run.configs[0]
        )
        await service.record_result(evaluator.run.id, result)

    @flow(name="evaluate-per-item-tasks", persist_result=False)
    async def per_item_tasks() -> None:
        async with open_runtime(settings, configure_logs=False) as flow_runtime:
            run = await start_run(
                dataset,
                llm=flow_runtime.require_llm(),
                configs_named=["bench"],
                scorers=specs,
                options=options,
                owner=owner,
            )
            evaluator = Evaluator(flow_runtime.chat, run, dataset)
            await evaluator._load_configs()

            async def bounded(index: int) -> None:
                async with gate:
                    await evaluate_one(evaluator, index)

            await asyncio.gather(*(bounded(i) for i in range(items)))

    async def flow_per_item() -> None:
        state = await per_item_tasks(return_state=True)
        assert state.is_completed(), state

    rows.append(await measure("per-item", items, flow_per_item))
    base = rows[0]["cpu_ms_per_item"]
    for row in rows:
        row["cpu_vs_direct"] = round(row["cpu_ms_per_item"] / base, 2)
        row["overhead_cpu_ms_per_item"] = round(row["cpu_ms_per_item"] - base, 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from functions.core.db.engine import engine_from_url
    from functions.core.db.migrate import migrate
    from tests.support.databases import create_postgres_database, drop_postgres_database
    from tests.support.simulator import SimulatorProcess

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    database_url = asyncio.run(create_postgres_database("switchboard_bench_eval"))
    sim = SimulatorProcess("--model", "sim-model", "--tokens", str(args.tokens))
    sim.start()
    try:
        asyncio.run(migrate(engine_from_url(database_url)))
        os.environ.update(
            {
                "SWITCHBOARD_DATABASE_URL": database_url,
                "SWITCHBOARD_LLM_URLS": sim.base_url,
                "SWITCHBOARD_DATABASE_POOL_MAX": str(args.concurrency + 8),
                "SWITCHBOARD_LOG_LEVEL": "WARNING",
            }
        )
        print(f"{args.items} items, concurrency {args.concurrency}, {args.tokens} tokens a reply")
        simulator = psutil.Process(sim.pid)
        sim_cpu = sum(simulator.cpu_times()[:2])
        with prefect_test_harness(server_startup_timeout=60):
            rows = asyncio.run(
                run(args.items, args.concurrency, args.tokens, database_url, sim.base_url)
            )
        sim_cpu = sum(simulator.cpu_times()[:2]) - sim_cpu
        total_items = args.items * (len(rows) + 1)
        print(f"  simulator CPU per request (all scenarios): {1000 * sim_cpu / total_items:.3f} ms")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "evaluate.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(json.dumps(rows, indent=2))
    finally:
        sim.close()
        asyncio.run(drop_postgres_database(database_url))


if __name__ == "__main__":
    main()
