"""The ``jetstream-fastapi`` command-line tool: :mod:`.commands` (the click commands), :mod:`.output`
(tables and JSON), :mod:`.apps` (loading an app given as ``module:attribute``). Imports lazily: loading it
imports no ``nats``, ``fastapi`` or ``pydantic`` until a command needs them."""

from .commands import main

__all__ = ["main"]
