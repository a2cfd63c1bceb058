"""The library builds on nats-py's public API only: no private name of nats-py's objects is used anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from nats.js.manager import JetStreamManager

import jetstream_fastapi

PACKAGE = Path(jetstream_fastapi.__file__).parent


def _nats_private_names() -> set[str]:
    names: set[str] = set()
    client = Client()
    for obj in (Client, client, Subscription, Msg, JetStreamContext, JetStreamManager, client.jsm()):
        names.update(name for name in dir(obj) if name.startswith("_") and not name.startswith("__"))
    return names


def _private_uses(source: str, filename: str) -> list[tuple[int, str]]:
    """``x._name`` where ``x`` is not ``self`` or ``cls``."""
    uses = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                uses.append((node.lineno, node.attr))
    return uses


def test_no_private_name_of_nats_py_is_used() -> None:
    private = _nats_private_names()
    assert {"_send_command", "_pending_data_size", "_subs"} <= private  # the check knows what to look for
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}: .{name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in _private_uses(path.read_text(), str(path))
        if name in private
    ]
    assert offenders == []


def test_the_check_finds_a_private_use() -> None:
    assert _private_uses("async def f(nc):\n    await nc._send_command(b'')\n", "x.py") == [(2, "_send_command")]
