"""A griffe extension for the API reference: the docstrings' reStructuredText roles as Markdown.

The docstrings are written for Python's tooling (``:class:`~jetstream_fastapi.InMemoryBroker```,
``:mod:`.front```, ``:meth:`Subscription.unsubscribe```); mkdocstrings renders docstrings as Markdown, where
those roles would show as raw text. Before the docstrings are parsed, each role becomes

- a cross-reference (``[`InMemoryBroker`][jetstream_fastapi.InMemoryBroker]``, which mkdocs-autorefs turns
  into a link) when its target is a name the reference page documents (``::: jetstream_fastapi.X`` in
  docs/reference.md), so a link never dangles (``mkdocs build --strict`` fails on one that does);
- inline code otherwise, shown as Sphinx shows it: ``~`` keeps the last name only, a leading ``.`` is
  dropped, functions and methods get ``()``.

mkdocs.yml loads it with the Python handler's ``extensions`` option.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|mod|meth|func|data|attr|exc|obj|const):`(?P<target>[^`]+)`")
REFERENCE = Path(__file__).resolve().parent.parent / "reference.md"
CALLABLE_ROLES = {"meth", "func"}


def documented(reference: str) -> set[str]:
    """The identifiers the reference page renders (``::: jetstream_fastapi.X`` lines)."""
    return set(re.findall(r"^::: ([\w.]+)$", reference, re.MULTILINE))


def convert(text: str, known: set[str]) -> str:
    """``text`` with every reStructuredText role replaced by a cross-reference or inline code."""

    def replace(match: re.Match[str]) -> str:
        role, target = match["role"], match["target"].strip()
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", target)  # :class:`title <target>`
        title = explicit["title"] if explicit else None
        path = (explicit["target"] if explicit else target).lstrip("~.").removesuffix("()")
        shown = title or (path.rsplit(".", 1)[-1] if target.startswith("~") else path)
        if role in CALLABLE_ROLES and not title:
            shown += "()"
        for candidate in (path, "jetstream_fastapi." + path.rsplit(".", 1)[-1]):
            # A public name documented on the reference page, under its own name: a link. A member (a
            # method, an attribute) may be inherited and not rendered, so members stay code.
            if candidate in known and role not in ("meth", "attr"):
                return f"[`{shown}`][{candidate}]"
        return f"`{shown}`"

    return ROLE.sub(replace, text)


class RstRoles(griffe.Extension):
    """Rewrites each docstring's roles as it is loaded (see the module docstring)."""

    def __init__(self) -> None:
        self.known = documented(REFERENCE.read_text(encoding="utf-8"))

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value, self.known)
