"""How the command-line tool prints: JSON for scripts, or plain aligned tables for people.

Message data (subjects, headers, bodies, errors) is written by whoever published it: in text mode every
character a terminal would act on (C0 and C1 controls, DEL, hence every escape sequence; bidi overrides
and other invisible format characters; line and paragraph separators) is shown escaped (``\\x1b``,
``\\u202e``) by :func:`printable`, so that it can neither redraw nor retitle the terminal, nor hide
or reorder what is shown. JSON mode escapes them by JSON's own rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click

_CELL = 60
"""Widest cell of a table; longer values are cut (``--json`` and ``show`` have everything)."""


def emit(as_json: bool, data: Any, text: Callable[[], str]) -> None:
    """Print ``data`` as JSON, or ``text()``."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text())


def _cell(value: Any) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, list):
        text = ", ".join(map(str, value))
    elif isinstance(value, dict):
        text = " ".join(f"{key}={_cell(item)}" for key, item in value.items()) or "-"
    else:
        text = str(value)
    # One line per row: a dead letter's body may hold newlines or terminal escapes; show them escaped.
    text = printable(text)
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def printable(text: str, *, keep: str = "") -> str:
    """``text`` with every non-printable character but those in ``keep`` (``"\\n\\t"`` for a body shown
    on several lines) written as a Python escape."""
    if text.isprintable():  # the common case, in C
        return text
    return "".join(char if char.isprintable() or char in keep else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a table of ``columns``, or a line saying there is nothing."""
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def dead_letter_rows(letters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dead letters as table rows: the error with its type, the consumer with the original stream."""
    return [
        {
            "seq": d["seq"],
            "subject": d["subject"],
            "consumer": f"{d['consumer']} ({d['stream']} #{d['sequence']})",
            "error": f"{d['error_type']}: {d['error']}" if d["error_type"] else d["error"],
            "body": d["body"],
        }
        for d in letters
    ]
