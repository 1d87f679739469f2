"""A replay as a reader sees it: flat rows for tables and charts, and a side-by-side HTML
table with each turn's changed words highlighted (``diff.diff_html``).

Plain data and escaped HTML only: the notebooks turn the rows into data frames and charts.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from functions.core.replay.diff import diff_html

if TYPE_CHECKING:
    from functions.core.replay.schemas import ReplayResult, Reply, SourceConversation

_STATUS_COLOURS = {"complete": "#2a7", "failed": "#c33", "cancelled": "#c80", "pending": "#888"}
_CELL = "border:1px solid #ddd;padding:6px 8px;vertical-align:top;text-align:left"


def conversation_rows(source: SourceConversation) -> list[dict[str, Any]]:
    """One row per stored message: who said what, and how each reply went."""
    return [
        {
            "seq": m.seq,
            "role": m.role,
            "status": m.status,
            "content": m.content,
            "config": f"{m.config.name}@{m.config.version}" if m.config else None,
            "model": m.model,
            "prompt_tokens": m.usage.prompt_tokens if m.usage else None,
            "completion_tokens": m.usage.completion_tokens if m.usage else None,
            "latency_ms": m.latency_ms,
            "ttft_ms": m.ttft_ms,
            "error": m.error.code if m.error else None,
        }
        for m in source.messages
    ]


def turn_rows(result: ReplayResult) -> list[dict[str, Any]]:
    """One row per turn: both replies' outcome, tokens and timings, and their similarity."""
    rows: list[dict[str, Any]] = []
    for turn in result.turns:
        row: dict[str, Any] = {
            "turn": turn.index,
            "seq": turn.seq,
            "asked": turn.asked,
            "similarity": turn.similarity,
            "changed": turn.changed,
            "prompt_messages": turn.prompt_messages,
        }
        for side, reply in (("original", turn.original), ("replayed", turn.replayed)):
            row |= {
                f"{side}_status": reply.status if reply else None,
                f"{side}_completion_tokens": reply.completion_tokens if reply else None,
                f"{side}_prompt_tokens": reply.prompt_tokens if reply else None,
                f"{side}_latency_ms": reply.latency_ms if reply else None,
                f"{side}_ttft_ms": reply.ttft_ms if reply else None,
                f"{side}_finish_reason": reply.finish_reason if reply else None,
                f"{side}_error": reply.error_code if reply else None,
            }
        rows.append(row)
    return rows


def turns_html(result: ReplayResult) -> str:
    """The turns side by side: what was asked, the original reply with the words the
    replay dropped struck through, the replay with the words it added highlighted."""
    head = "".join(
        f'<th style="{_CELL};background:#f4f4f4">{name}</th>'
        for name in (
            "turn",
            "asked",
            "original",
            f"replay ({html.escape(result.config)})",
            "numbers",
        )
    )
    body: list[str] = []
    for turn in result.turns:
        original, replayed = turn.original, turn.replayed
        if original is not None and original.status == replayed.status == "complete":
            left, right = diff_html(original.content, replayed.content)
        else:
            left = _text(original.content) if original is not None else ""
            right = _text(replayed.content)
        similarity = "-" if turn.similarity is None else f"{turn.similarity:.2f}"
        body.append(
            "<tr>"
            f'<td style="{_CELL}">{turn.index}</td>'
            f'<td style="{_CELL};max-width:16em">{_text(turn.asked)}</td>'
            f'<td style="{_CELL};max-width:28em">{_badge(original)}{left}</td>'
            f'<td style="{_CELL};max-width:28em">{_badge(replayed)}{right}</td>'
            f'<td style="{_CELL};white-space:nowrap">similarity {similarity}<br>'
            f"{_numbers(original)} → {_numbers(replayed)}</td>"
            "</tr>"
        )
    return (
        '<table style="border-collapse:collapse;font-size:13px;line-height:1.4">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _badge(reply: Reply | None) -> str:
    if reply is None:
        return '<div style="color:#888"><i>no reply stored</i></div>'
    colour = _STATUS_COLOURS.get(reply.status, "#888")
    label: str = reply.status
    if reply.error_code:
        label += f": {reply.error_code}"
    badge = f'<div style="color:{colour};font-weight:bold">{html.escape(label)}</div>'
    if reply.error_message and reply.status != "complete":
        badge += f'<div style="color:#666;font-size:12px">{_text(reply.error_message)}</div>'
    return badge


def _numbers(reply: Reply | None) -> str:
    if reply is None or reply.status != "complete":
        return "-"
    tokens = "?" if reply.completion_tokens is None else str(reply.completion_tokens)
    latency = "?" if reply.latency_ms is None else f"{reply.latency_ms:.0f} ms"
    return f"{tokens} tok, {latency}"
