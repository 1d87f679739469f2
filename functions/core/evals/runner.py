"""Running an evaluation: every item under every configuration, scored, recorded, resumable.

Each item is sent through the one send path (``ChatService.send`` with an ``exact`` prompt
and the configuration pinned to its version), so routing, the LLM client's retries,
metrics and the stored exchange are those of any other send; the run's key owns one
conversation per item and configuration. The prompt is built by the prompt rule
(``chat.prompt.build_prompt``): the configuration's system prompt (or the item's own
system turn), the item's earlier turns as history (the configuration's
``history_window`` applies to them as in chat), then its last turns.

- **Bounded concurrency**: ``concurrency`` items in flight at once.
- **Retries**: a transient failure (upstream unavailable, overloaded, timed out, a 5xx or a
  cut stream, or the item's own timeout) is tried again up to ``retries`` times, with
  exponential backoff and jitter; a failure that would repeat (context too long, model not
  served) is recorded at once.
- **Per-item timeout**: each attempt gives up after ``item_timeout_s``; the stored reply is
  then ``cancelled``.
- **Resume**: only pairs without a result are sent; a result is written once the item is
  scored, so a process killed mid-run loses at most the items in flight, which the next
  run sends again.
- **Served models first**: a run (new or resumed) starts only if an upstream serves the
  model of each of its configurations and judges, by the send path's own rule
  (``LLMClient.require_model``); otherwise nothing is created or sent, and the error names
  the models that are served.

A run's life, for any caller (the evaluation flow, a notebook, a test): :func:`start_run`
creates it or finds the one to resume, :func:`take_up` makes this process its runner
(forgetting failed items first when asked), :func:`stopped_means_ended` records a run
whose sending fails or is stopped as ``failed`` or ``interrupted``, and :func:`conclude`
stores its report and how it ended. :func:`run_evaluation` is the whole life in one call.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from functions.core.chat.prompt import build_prompt
from functions.core.chat.schemas import SendRequest
from functions.core.chat.targets import Target
from functions.core.configs import service as configs
from functions.core.errors import ConflictError, InvalidInputError, SwitchboardError
from functions.core.evals import service
from functions.core.evals.datasets import (
    MAX_REPORTED_ERRORS,
    Dataset,
    DatasetError,
    LineError,
    item_turns,
)
from functions.core.evals.report import RunReport, build_report
from functions.core.evals.schemas import (
    DatasetItem,
    EvalResultOut,
    EvalRunOut,
    EvalTarget,
    Judge,
    RunStatus,
    ScorerSpec,
    scorer_name,
)
from functions.core.evals.scorers import (
    check_definition,
    check_expected,
    effective_scorers,
    score_output,
)
from functions.core.keys.schemas import UNRESTRICTED
from functions.core.llm.errors import LLMError, ModelNotServedError
from functions.core.logging import get_logger
from functions.core.messages.schemas import StoredTurn, Turn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from functions.core.chat.service import ChatService
    from functions.core.configs.schemas import LLMConfigOut
    from functions.core.liveness.service import Lease
    from functions.core.llm.client import LLMClient
    from functions.core.messages.schemas import MessageOut

log = get_logger(__name__)

# Failures worth another attempt: the next one may well succeed.
TRANSIENT_CODES = frozenset(
    {"llm_unavailable", "llm_overloaded", "llm_timeout", "llm_error", "item_timeout"}
)


class RunOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a run sends: stored with the run, so a resume behaves as the first start did."""

    concurrency: Annotated[int, Meta(ge=1, le=1024)] = 8
    retries: Annotated[int, Meta(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Meta(ge=0, le=600)] = 1.0
    backoff_max_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    item_timeout_s: Annotated[float, Meta(gt=0, le=86_400)] = 300.0


class RunCounts(msgspec.Struct, kw_only=True):
    """What one (possibly resumed) pass over a run did."""

    total: int
    already_done: int
    sent: int = 0
    errors: int = 0
    retries: int = 0


def eval_prompt(turns: Sequence[Turn], config: LLMConfigOut | None) -> list[Turn]:
    """The turns to send for an item's chat under ``config``, by the prompt rule.

    Everything up to the item's last assistant turn is its history (so a
    ``history_window`` trims it as chat would); the rest are the new turns. An item that
    brings its own system turn keeps it in place of the configuration's.
    """
    turns = list(turns)
    system = config.system_prompt if config else None
    own_system: Turn | None = None
    if turns and turns[0].role in ("system", "developer"):
        own_system, turns = turns[0], turns[1:]
        system = None
    last_reply = max((i for i, turn in enumerate(turns) if turn.role == "assistant"), default=-1)
    history, new = turns[: last_reply + 1], turns[last_reply + 1 :]
    prompt = build_prompt(
        mode="history",
        new_turns=new,
        stored=[
            StoredTurn(seq=seq, status="complete", turn=turn)
            for seq, turn in enumerate(history, start=1)
        ],
        system_prompt=system,
        window=config.history_window if config else None,
    )
    return [own_system, *prompt] if own_system is not None else prompt


def judge_configs(scorers: Sequence[ScorerSpec], items: Sequence[DatasetItem]) -> list[str]:
    """Every judge configuration named by the run's scorers or an item's, in first-seen order."""
    named: dict[str, None] = {}
    for spec in [*scorers, *(spec for item in items for spec in item.scorers)]:
        if isinstance(spec, Judge):
            named.setdefault(spec.config)
    return list(named)


def check_scorers(dataset: Dataset, scorers: Sequence[ScorerSpec]) -> None:
    """The run's scorers are sound and every item can be scored by them (an expected value
    where one is needed); raises :class:`DatasetError` naming each problem's line."""
    errors: list[LineError] = []
    for index, spec in enumerate(scorers):
        for field, message in check_definition(spec):
            where = f"scorers[{index}]" + (f".{field}" if field else "")
            errors.append(LineError(line=0, field=where, message=f"run scorer: {message}"))
    for line, item in zip(dataset.lines, dataset.items, strict=True):
        own = {scorer_name(spec) for spec in item.scorers}
        for spec in scorers:
            if scorer_name(spec) in own:
                continue  # replaced by the item's own, checked when the file was read
            for field, message in check_expected(spec, item.expected):
                errors.append(
                    LineError(
                        line=line, field=field, message=f"scorer {scorer_name(spec)}: {message}"
                    )
                )
    if errors:
        raise DatasetError(dataset.source, errors[:MAX_REPORTED_ERRORS])


async def check_served(llm: LLMClient, targets: Sequence[EvalTarget]) -> None:
    """Every configuration's model is served, as a send would find it: else one
    :class:`ModelNotServedError` naming each configuration that is not, its model, and
    the models that are served (``LLMUnavailableError`` when no model list can be read)."""
    unserved: list[str] = []
    served: set[str] = set()
    for target in targets:
        config = await configs.get_config(target.name, target.version)
        try:
            await llm.require_model(config.model)
        except ModelNotServedError as exc:
            served.update(exc.details.get("known_models", []))
            unserved.append(f"{target.label} (model {config.model!r})")
    if unserved:
        shown = ", ".join(sorted(served)) or "none"
        raise ModelNotServedError(
            f"no LLM upstream serves the model of {', '.join(unserved)}; the models served "
            f"are: {shown}. Point the configuration at one of them (PUT /v1/configs/NAME) "
            "or serve its model",
            details={"configs": unserved, "known_models": sorted(served)},
        )


async def start_run(
    dataset: Dataset,
    *,
    llm: LLMClient,
    configs_named: Sequence[str],
    scorers: Sequence[ScorerSpec],
    options: RunOptions,
    owner: uuid.UUID,
    name: str = "",
    run_id: uuid.UUID | None = None,
) -> EvalRunOut:
    """A new run, or the run ``run_id`` to resume (refused if its dataset changed).

    A new run pins every configuration (and judge) to its current version. Either way,
    nothing starts unless ``llm`` serves every model involved (:func:`check_served`).
    """
    if run_id is not None:
        try:
            run = await service.get_run(run_id)
        except SwitchboardError as exc:
            if exc.code != "not_found":
                raise
        else:
            _check_resume(run, dataset, configs_named)
            judged = [await service.resolve_target(label) for label in run_judges(run).values()]
            await check_served(llm, [*run.configs, *judged])
            return run
    check_scorers(dataset, scorers)
    targets = await service.resolve_targets(configs_named)
    judged_targets = {
        text: await service.resolve_target(text) for text in judge_configs(scorers, dataset.items)
    }
    await check_served(llm, [*targets, *judged_targets.values()])
    judges = {text: target.label for text, target in judged_targets.items()}
    parameters: dict[str, Any] = {**msgspec.to_builtins(options), "judges": judges}
    return await service.create_run(
        name=name,
        dataset=dataset.source,
        dataset_sha256=dataset.sha256,
        items=len(dataset.items),
        configs=targets,
        scorers=scorers,
        parameters=parameters,
        owner=owner,
        run_id=run_id,
    )


def _check_resume(run: EvalRunOut, dataset: Dataset, configs_named: Sequence[str]) -> EvalRunOut:
    if run.dataset_sha256 != dataset.sha256:
        raise ConflictError(
            f"run {run.id} was started with another dataset ({run.dataset}, sha256 "
            f"{run.dataset_sha256[:12]}…; this one is {dataset.sha256[:12]}…): resume it with "
            "the same file, or start a new run",
            details={"run_id": str(run.id)},
        )
    labels = {target.label for target in run.configs}
    names = {target.name for target in run.configs}
    for text in configs_named:
        name, version = service.parse_config_ref(text)
        known = f"{name}@{version}" in labels if version else name in names
        if not known:
            raise ConflictError(
                f"run {run.id} evaluates {sorted(labels)}, not {text!r}: a resumed run keeps "
                "its configurations",
                details={"run_id": str(run.id)},
            )
    return run


def run_judges(run: EvalRunOut) -> dict[str, str]:
    """The run's judges: each as its scorers name it, and the version it was pinned to."""
    return {str(text): str(label) for text, label in dict(run.parameters.get("judges", {})).items()}


def run_options(run: EvalRunOut) -> RunOptions:
    fields = {k: v for k, v in run.parameters.items() if k in RunOptions.__struct_fields__}
    return msgspec.convert(fields, RunOptions)


class TakenUp(msgspec.Struct, kw_only=True):
    """A run this process now runs: as it stands, whether it was begun before, and how
    many failed results were forgotten to be sent again."""

    run: EvalRunOut
    resumed: bool
    forgotten: int = 0


async def take_up(run: EvalRunOut, lease: Lease, *, retry_failed: bool = False) -> TakenUp:
    """Make this process (``lease``) the runner of ``run`` (refused while another lives);
    with ``retry_failed``, forget the results whose item failed so they are sent again.

    Forgetting waits until the run is ours: nobody else is recording meanwhile.
    """
    resumed = run.results > 0
    claimed = await service.claim_run(run.id, lease)
    if not retry_failed:
        return TakenUp(run=claimed, resumed=resumed)
    forgotten = await service.forget_failed(run.id)
    return TakenUp(run=await service.get_run(run.id), resumed=resumed, forgotten=forgotten)


@asynccontextmanager
async def stopped_means_ended(run_id: uuid.UUID) -> AsyncIterator[None]:
    """Whatever stops the block ends the run: ``interrupted`` when it was cancelled or
    interrupted (a resume takes it up), ``failed`` on an error, which is raised again; the
    runner lets go of it either way."""
    try:
        yield
    except BaseException as exc:
        stopped = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
        await service.finish_run(
            run_id, "interrupted" if stopped else "failed", error=f"{type(exc).__name__}: {exc}"
        )
        raise


async def conclude(run_id: uuid.UUID) -> RunReport:
    """The run's report, stored with it, and how it ended: ``complete``, ``interrupted``
    (results missing) or ``failed`` (every item has a result but some configuration
    answered none, which the report's ``failure`` names)."""
    run = await service.get_run(run_id)
    results = await service.results_of(run_id)
    report = build_report(run, results)
    failure = None
    if len(results) < run.items * len(run.configs):
        status: RunStatus = "interrupted"
    else:
        failure = report.failure()
        status = "failed" if failure else "complete"
    report = msgspec.structs.replace(report, status=status)
    await service.finish_run(run_id, status, report=msgspec.to_builtins(report), error=failure)
    return report


class Evaluation(msgspec.Struct, kw_only=True):
    """One pass over a run from start to report."""

    taken: TakenUp
    counts: RunCounts
    report: RunReport


async def run_evaluation(
    chat: ChatService,
    lease: Lease,
    run: EvalRunOut,
    dataset: Dataset,
    *,
    retry_failed: bool = False,
    on_result: Callable[[EvalResultOut, int, int], None] | None = None,
) -> Evaluation:
    """Take up ``run`` (from :func:`start_run`), send every pending pair, conclude it:
    the run's whole life in one call, as the evaluation flow lives it step by step."""
    taken = await take_up(run, lease, retry_failed=retry_failed)
    async with stopped_means_ended(run.id):
        counts = await Evaluator(chat, taken.run, dataset, on_result=on_result).evaluate()
    return Evaluation(taken=taken, counts=counts, report=await conclude(run.id))


class Evaluator:
    """Runs one evaluation run in this process (see the module docstring)."""

    def __init__(
        self,
        chat: ChatService,
        run: EvalRunOut,
        dataset: Dataset,
        *,
        on_result: Callable[[EvalResultOut, int, int], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if run.dataset_sha256 != dataset.sha256:
            raise InvalidInputError("the dataset is not the run's", details={"field": "dataset"})
        self._chat = chat
        self.run = run
        self._dataset = dataset
        self._options = run_options(run)
        self._on_result = on_result
        self._sleep = sleep
        self._configs: dict[uuid.UUID, LLMConfigOut] = {}
        self._judges: dict[str, EvalTarget] = {}
        self._random = random.Random()  # noqa: S311 - backoff jitter, not secrets

    async def _load_configs(self) -> None:
        for target in self.run.configs:
            self._configs[target.id] = await configs.get_config(target.name, target.version)
        for text, label in run_judges(self.run).items():
            target = await service.resolve_target(label)
            self._judges[text] = target
            self._configs[target.id] = await configs.get_config(target.name, target.version)

    def pending(
        self, done: set[tuple[str, uuid.UUID]]
    ) -> list[tuple[int, DatasetItem, EvalTarget]]:
        """The pairs still to send, item by item (each item under every configuration in
        turn, so an interrupted run leaves complete pairs to compare)."""
        return [
            (index, item, target)
            for index, item in enumerate(self._dataset.items)
            for target in self.run.configs
            if (item.id, target.id) not in done
        ]

    async def evaluate(self) -> RunCounts:
        """Send, score and record every pair without a result; returns what was done."""
        await self._load_configs()
        done = await service.done_pairs(self.run.id)
        pending = self.pending(done)
        total = len(self._dataset.items) * len(self.run.configs)
        counts = RunCounts(total=total, already_done=total - len(pending))
        log.info(
            "eval.started", run_id=str(self.run.id), pending=len(pending), done=counts.already_done
        )
        finished = counts.already_done
        work = iter(pending)

        async def worker() -> None:
            nonlocal finished
            # One shared iterator: each pair is taken by exactly one worker.
            for index, item, target in work:
                result = await self.evaluate_item(index, item, target)
                await service.record_result(self.run.id, result)
                finished += 1
                counts.sent += 1
                counts.retries += result.attempts - 1
                counts.errors += result.error_code is not None
                if self._on_result is not None:
                    self._on_result(result, finished, total)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._options.concurrency, len(pending))):
                group.create_task(worker())
        return counts

    async def evaluate_item(
        self, index: int, item: DatasetItem, target: EvalTarget
    ) -> EvalResultOut:
        """One item under one configuration: sent (with retries), then scored."""
        config = self._configs[target.id]
        request = SendRequest(
            owner=self.run.owner,
            access=UNRESTRICTED,  # an operator's run
            turns=eval_prompt(item_turns(item), config),
            prompt="exact",
            target=Target(config=target.name, version=target.version),
            title=f"eval {str(self.run.id)[:8]} {item.id}"[:500],
            request_id=f"eval-{self.run.id}-{index}-{target.version}",
        )
        reply, failure, attempts = await self._send(request)
        if reply is None:
            assert failure is not None
            return EvalResultOut(
                item_id=item.id,
                item_index=index,
                config=target.label,
                config_id=target.id,
                output=getattr(failure, "partial_text", ""),
                scores=[],
                error_code=failure.code,
                error_message=failure.message[:4000],
                attempts=attempts,
                message_id=_message_id(failure),
                created_at=datetime.now(UTC),
            )
        scores = await score_output(
            effective_scorers(self.run.scorers, item), reply.content, item, self._ask_judge
        )
        usage = reply.usage
        return EvalResultOut(
            item_id=item.id,
            item_index=index,
            config=target.label,
            config_id=target.id,
            output=reply.content,
            scores=scores,
            latency_ms=reply.latency_ms,
            ttft_ms=reply.ttft_ms,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            finish_reason=reply.finish_reason,
            attempts=attempts,
            message_id=reply.id,
            created_at=datetime.now(UTC),
        )

    async def _send(
        self, request: SendRequest
    ) -> tuple[MessageOut | None, SwitchboardError | None, int]:
        """The reply, or the last failure; and how many attempts it took."""
        options = self._options
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(options.item_timeout_s):
                    return await self._chat.send(request), None, attempt
            except TimeoutError:
                failure: SwitchboardError = ItemTimeoutError(
                    f"no reply within the item timeout ({options.item_timeout_s:g} s)"
                )
            except (LLMError, ConflictError) as exc:
                failure = exc
            except SwitchboardError as exc:
                if exc.code in ("database_unavailable", "internal_error"):
                    raise
                failure = exc
            if failure.code not in TRANSIENT_CODES or attempt > options.retries:
                return None, failure, attempt
            delay = min(options.backoff_max_s, options.backoff_s * 2 ** (attempt - 1))
            if failure.retry_after_s is not None:
                delay = max(delay, failure.retry_after_s)
            log.info(
                "eval.retry",
                request_id=request.request_id,
                attempt=attempt,
                code=failure.code,
                delay_s=round(delay, 3),
            )
            await self._sleep(delay * self._random.uniform(0.5, 1.0))

    async def _ask_judge(self, config: str, turns: list[Turn]) -> str:
        target = self._judges.get(config)
        if target is None:
            raise InvalidInputError(f"judge {config!r} was not pinned when the run started")
        request = SendRequest(
            owner=self.run.owner,
            access=UNRESTRICTED,  # an operator's run
            turns=eval_prompt(turns, self._configs[target.id]),
            prompt="exact",
            target=Target(config=target.name, version=target.version),
            title=f"eval {str(self.run.id)[:8]} judge"[:500],
            request_id=f"eval-{self.run.id}-judge-{uuid.uuid4().hex[:8]}",
        )
        reply, failure, _ = await self._send(request)
        if reply is None:
            assert failure is not None
            raise failure
        return reply.content


class ItemTimeoutError(SwitchboardError):
    """An attempt at an item took longer than the run's per-item timeout."""

    status_code = 504
    code = "item_timeout"


def _message_id(failure: SwitchboardError) -> uuid.UUID | None:
    raw = failure.details.get("assistant_message_id")
    try:
        return None if raw is None else uuid.UUID(str(raw))
    except ValueError:
        return None
