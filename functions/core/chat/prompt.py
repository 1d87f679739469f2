"""The prompt rule: which stored messages a model sees, in one pure function.

Chat, the OpenAI door, evaluation and replay all build their prompts here, so the rule
exists once:

- ``history`` mode (chat): the configuration's system prompt, then the stored history,
  then the new turns. A stored exchange counts only if its reply completed: a failed or
  cancelled reply is left out together with the turns that asked for it, so one bad
  exchange (say, a message too long for the model's context) cannot poison every later
  send. With a ``history_window`` of N, the prompt keeps the newest N messages, never
  fewer than the new turns themselves; without one, the newest
  ``SWITCHBOARD_HISTORY_MAX_MESSAGES`` stored messages at most.
- ``exact`` mode (the door): exactly the turns sent; nothing stored is added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from functions.core.messages.schemas import Turn

if TYPE_CHECKING:
    from collections.abc import Sequence

    from functions.core.messages.schemas import StoredTurn

PromptMode = Literal["history", "exact"]


def history_limit(mode: PromptMode, window: int | None, cap: int) -> int:
    """How many of the newest stored messages the claim reads for :func:`build_prompt`.

    With a window, twice it plus one exchange: enough for the window when exchanges
    complete (when some failed, the window may hold fewer messages than it could).
    Without one, ``cap`` (``SWITCHBOARD_HISTORY_MAX_MESSAGES``): a long conversation sends
    its newest messages, never an unbounded history.
    """
    if mode == "exact":
        return 0
    return cap if window is None else min(2 * window + 2, cap)


def counted_history(stored: Sequence[StoredTurn]) -> list[Turn]:
    """The stored turns that belong to completed exchanges, in order."""
    counted: list[Turn] = []
    asking: list[Turn] = []
    for item in stored:
        if item.turn.role == "assistant" and item.status != "complete":
            asking = []  # the reply failed, was cancelled or is pending: drop its question
        elif item.status != "complete":
            continue
        elif item.turn.role == "assistant":
            counted += asking
            counted.append(item.turn)
            asking = []
        else:
            asking.append(item.turn)
    return counted


def build_prompt(
    *,
    mode: PromptMode,
    new_turns: Sequence[Turn],
    stored: Sequence[StoredTurn] = (),
    system_prompt: str | None = None,
    window: int | None = None,
) -> list[Turn]:
    """The messages to send upstream for ``new_turns`` (see the module docstring)."""
    if mode == "exact":
        return list(new_turns)
    earlier = counted_history(stored)
    if window is not None:
        keep = max(0, window - len(new_turns))
        earlier = earlier[len(earlier) - keep :] if keep else []
    prompt = [*earlier, *new_turns]
    if system_prompt:
        prompt.insert(0, Turn(role="system", content=system_prompt))
    return prompt
