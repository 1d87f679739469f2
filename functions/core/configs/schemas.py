"""Named, versioned LLM configurations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from functions.core.schemas import END, Input, Output

CONFIG_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}" + END
ConfigName = Annotated[
    str,
    Meta(
        pattern=CONFIG_NAME_PATTERN,
        description="Lower-case letters, digits, '.', '_' and '-'; at most 100 characters.",
        examples=["support-bot"],
    ),
]
Temperature = Annotated[float, Meta(ge=0, le=2, examples=[0.7])]
TopP = Annotated[float, Meta(gt=0, le=1, examples=[0.95])]
MaxTokens = Annotated[int, Meta(ge=1, le=1_000_000, examples=[512])]
HistoryWindow = Annotated[int, Meta(ge=1, le=10_000)]
# At most this many replies of a configuration at once, gateway-wide (functions/core/limits).
MaxConcurrent = Annotated[int, Meta(ge=1, le=1_000_000)]
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
StopList = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=16)]

# What a configuration may set and a single send may override.
SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "stop", "seed")

# Request fields Switchboard sets itself; letting ``extra`` override them would break the
# history and streaming guarantees.
RESERVED_EXTRA_KEYS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "n",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
    }
)


Model = Annotated[
    str, Meta(min_length=1, max_length=200, examples=["meta-llama/Llama-3.1-8B-Instruct"])
]
SystemPrompt = Annotated[
    str, Meta(max_length=100_000, examples=["You are a concise support agent."])
]
Extra = Annotated[
    dict[str, Any],
    Meta(description="Further vLLM request fields, passed as they are (e.g. top_k)."),
]


class LLMConfigSpec(Input, kw_only=True):
    """Everything that defines one version of a configuration (the body of ``PUT``, which
    replaces the whole definition: a field left out takes its default)."""

    model: Model
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    stop: StopList | None = None
    seed: Seed | None = None
    system_prompt: SystemPrompt | None = None
    history_window: HistoryWindow | None = msgspec.field(default=None)
    extra: Extra = msgspec.field(default_factory=dict)
    is_default: bool = False
    max_concurrent: MaxConcurrent | None = None


class LLMConfigPatch(Input, kw_only=True):
    """A partial edit (the body of ``PATCH``): the fields present change, the others keep
    the latest version's values; ``null`` clears a field that may be empty."""

    model: Model | UnsetType = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    top_p: TopP | UnsetType | None = UNSET
    max_tokens: MaxTokens | UnsetType | None = UNSET
    stop: StopList | UnsetType | None = UNSET
    seed: Seed | UnsetType | None = UNSET
    system_prompt: SystemPrompt | UnsetType | None = UNSET
    history_window: HistoryWindow | UnsetType | None = UNSET
    extra: Extra | UnsetType = UNSET
    is_default: bool | UnsetType = UNSET
    max_concurrent: MaxConcurrent | UnsetType | None = UNSET


class LLMConfigCreate(LLMConfigSpec, kw_only=True):
    """A new configuration: its name plus the first version's definition."""

    name: ConfigName


class LLMConfigOut(Output, kw_only=True):
    id: uuid.UUID
    name: str
    version: int
    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    system_prompt: str | None = None
    history_window: int | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    is_default: bool = False
    created_at: datetime
    archived_at: datetime | None = None
    max_concurrent: int | None = None

    def sampling(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The sampling fields to send, ``overrides`` winning; unset ones left out."""
        chosen = {name: getattr(self, name) for name in SAMPLING_FIELDS} | (overrides or {})
        return {name: value for name, value in chosen.items() if value is not None}


class LLMConfigSaved(LLMConfigOut, kw_only=True):
    """A version just stored, and what its writer should know about it (for example that
    no upstream serves its model: stored all the same, but sends fail until one does)."""

    warnings: list[str] = msgspec.field(default_factory=list)
