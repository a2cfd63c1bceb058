"""The ``jetstream-fastapi`` command-line tool: :mod:`.commands` (the click commands), :mod:`.outbox` (the
``outbox`` group), :mod:`.output` (tables and JSON), :mod:`.apps` (loading an app given as
``module:attribute``). Imports lazily: loading it imports no ``nats``, ``fastapi``, ``pydantic`` or
``sqlalchemy`` until a command needs them."""

from . import outbox as _outbox  # noqa: F401 - registers the outbox group on main
from .commands import main

__all__ = ["main"]
