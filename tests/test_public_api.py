"""The library builds on nats-py's public API only: no private name of nats-py's objects is used anywhere."""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from collections.abc import Iterator
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


def _classes_by_name() -> dict[str, list[str]]:
    defined: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    return defined


def test_every_error_class_is_defined_once_in_the_error_tree() -> None:
    defined = _classes_by_name()
    assert "DeliveryLimitError" in defined  # the check sees the tree
    elsewhere = {name: paths for name, paths in defined.items() if paths != ["errors.py"]}
    assert elsewhere == {}


_REFERENCE = re.compile(r":(mod|class|func|exc|meth|attr|data):`~?([\w.]+)`")


def _docstrings(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            yield node.value.value


def _names_of(tree: ast.Module) -> set[str]:
    """Every name a module defines or imports, TYPE_CHECKING imports included."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def _resolves(target: str, module: str, names: set[str], package: bool = False) -> bool:
    if target.startswith("."):  # relative to the module's package (to the package itself in its __init__)
        target = f"{module if package else module.rsplit('.', 1)[0]}.{target.lstrip('.')}"
    parts = target.split(".")
    if parts[0] in names or parts[0] in jetstream_fastapi.__all__ or hasattr(builtins, parts[0]):
        return True  # a name of the module (its members are not checked), of the package, or a builtin
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_every_docstring_reference_resolves() -> None:
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        tree = ast.parse(path.read_text(), str(path))
        names = _names_of(tree)
        for text in _docstrings(tree):
            for role, target in _REFERENCE.findall(text):
                if role in ("meth", "attr") and "." not in target:
                    continue  # a member of the class at hand
                if not _resolves(target, module, names, package=path.name == "__init__.py"):
                    broken.append(f"{path.relative_to(PACKAGE)}: :{role}:`{target}`")
    assert broken == []


def test_the_reference_check_finds_a_broken_one() -> None:
    assert not _resolves("jetstream_fastapi.core.terminating", "jetstream_fastapi.driver", set())
    assert not _resolves(".front.Nothing", "jetstream_fastapi.core.broker", set())
    assert _resolves(".front.Front", "jetstream_fastapi.core.broker", set())
