"""Handlers that feel like routes: typed payloads and ``Depends`` in consumer handlers.

A handler registered on a :class:`~jetstream_fastapi.ConsumerRouter` may take, in any order:

* one **payload** parameter, annotated with a pydantic model, ``bytes``, ``str``, ``dict``/``list`` (JSON),
  a dataclass or any type pydantic validates: it receives the decoded, validated body. A body that does
  not validate is poison: the handler is not called and the message is rejected (dead-lettered with the
  validation error), never redelivered in a loop;
* a parameter annotated :class:`~jetstream_fastapi.Message`: the raw message with its delivery;
* a parameter annotated :class:`~jetstream_fastapi.Broker`: the app's broker;
* a parameter annotated ``starlette.datastructures.State``: the app's lifespan state;
* ``Depends(...)`` parameters (as a default or in ``Annotated``), resolved per message as FastAPI does
  for routes: nested dependencies, one call per message for a dependency used twice (``use_cache``), and
  dependencies with ``yield`` whose cleanup runs after the handler and before the ack. An error raised
  by a dependency is handled like an error of the handler.

The signature is checked once, at registration; a plain ``async def handler(msg: Message)`` is used as
it is, with no wrapper on the hot path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import params
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from ..driver import Broker, Handler, Message, Reject
from ..errors import InvalidHandlerError

Decoder = Callable[[bytes], Any]
_Source = Callable[["_Context"], Awaitable[Any]]


@dataclasses.dataclass(slots=True)
class _Context:
    """What one message's dependencies are solved from."""

    message: Message
    broker: Broker | None
    state: State
    stack: contextlib.AsyncExitStack
    cache: dict[Callable[..., Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Dependency:
    call: Callable[..., Any]
    arguments: tuple[tuple[str, _Source], ...]
    use_cache: bool


class HandlerPlan:
    """How to call one registered handler: where each of its arguments comes from."""

    def __init__(self, handler: Callable[..., Awaitable[object]]) -> None:
        self.handler = handler
        self.name = getattr(handler, "__qualname__", repr(handler))
        self.payload: str | None = None
        self.payload_type: Any = None
        """The payload parameter's annotation (``None`` when the handler takes the raw message)."""
        self.decoder: Decoder | None = None
        self.arguments = self._arguments(handler, top_level=True)
        self.reply_type: Any = _reply_type(handler)
        """The return annotation when the handler answers requests with it (``None``: it returns nothing)."""
        # `async def h(msg: Message)` (or an unannotated single parameter) needs no wrapper at all.
        self.plain = len(self.arguments) == 1 and self.arguments[0][1] is _message

    def bind(self, broker: Broker | None, state: Mapping[str, Any] | None) -> Handler:
        """The ``Handler`` a broker runs: solves the arguments of each message, then calls the handler."""
        if self.plain:
            return typing.cast(Handler, self.handler)
        handler, arguments, app_state = self.handler, self.arguments, State(dict(state or {}))

        async def call(message: Message) -> object:
            async with contextlib.AsyncExitStack() as stack:
                context = _Context(message, broker, app_state, stack, {})
                kwargs = {name: await source(context) for name, source in arguments}
                return await handler(**kwargs)  # the reply to a request (after the cleanup of the dependencies)

        call.__qualname__ = self.name
        return call

    # -- reading a signature -----------------------------------------------------------------------

    def _arguments(self, call: Callable[..., Any], *, top_level: bool) -> tuple[tuple[str, _Source], ...]:
        # A callable object's annotations live on its __call__ method.
        annotated = call if inspect.isroutine(call) else getattr(call, "__call__", call)  # noqa: B004
        try:
            hints = typing.get_type_hints(annotated, include_extras=True)
        except Exception as error:
            raise InvalidHandlerError(f"cannot read the annotations of {_name(call)}: {error}") from None
        signature = inspect.signature(call)
        if len(signature.parameters) == 1 and top_level:
            [only] = signature.parameters.values()
            if only.name not in hints:
                return ((only.name, _message),)
        arguments: list[tuple[str, _Source]] = []
        for parameter in signature.parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise InvalidHandlerError(f"{_name(call)}: *args and **kwargs cannot be injected")
            arguments.append((parameter.name, self._source(call, parameter, hints, top_level=top_level)))
        return tuple(arguments)

    def _source(
        self, call: Callable[..., Any], parameter: inspect.Parameter, hints: dict[str, Any], *, top_level: bool
    ) -> _Source:
        annotation = hints.get(parameter.name, parameter.annotation)
        depends = parameter.default if isinstance(parameter.default, params.Depends) else None
        if typing.get_origin(annotation) is typing.Annotated:
            annotation, *extras = typing.get_args(annotation)
            depends = next((e for e in extras if isinstance(e, params.Depends)), depends)
        if depends is not None:
            dependency_call = depends.dependency or annotation
            if not callable(dependency_call):
                raise InvalidHandlerError(f"{_name(call)}: Depends() on {parameter.name!r} needs a callable")
            return self._dependency(dependency_call, depends.use_cache)
        if annotation is Message:
            return _message
        if annotation is State:
            return _state
        if annotation is Broker or _is_broker_type(annotation):
            return _broker
        if not top_level:
            raise InvalidHandlerError(
                f"dependency {_name(call)}: parameter {parameter.name!r} must be Message, Broker, State or Depends()"
            )
        if self.payload is not None:
            raise InvalidHandlerError(
                f"handler {self.name}: two payload parameters ({self.payload!r}, {parameter.name!r}); annotate "
                "the raw message with Message and dependencies with Depends()"
            )
        if annotation is inspect.Parameter.empty:
            raise InvalidHandlerError(f"handler {self.name}: annotate parameter {parameter.name!r} with its type")
        self.payload = parameter.name
        self.payload_type = annotation
        self.decoder = decoder_for(annotation)
        return self._payload

    def _dependency(self, call: Callable[..., Any], use_cache: bool) -> _Source:
        dependency = _Dependency(call, self._arguments(call, top_level=False), use_cache)

        async def solve(context: _Context) -> Any:
            if dependency.use_cache and dependency.call in context.cache:
                return context.cache[dependency.call]
            kwargs = {name: await source(context) for name, source in dependency.arguments}
            value = await _invoke(dependency.call, kwargs, context.stack)
            if dependency.use_cache:
                context.cache[dependency.call] = value
            return value

        return solve

    async def _payload(self, context: _Context) -> Any:
        assert self.decoder is not None
        try:
            return self.decoder(context.message.body)
        except (ValidationError, UnicodeDecodeError) as error:
            raise Reject(f"invalid payload for {self.name}: {error}") from error


async def _invoke(call: Callable[..., Any], kwargs: dict[str, Any], stack: contextlib.AsyncExitStack) -> Any:
    # A callable object's kind is its __call__'s, as FastAPI reads it (an object whose __call__ yields).
    method = call if inspect.isroutine(call) else getattr(call, "__call__", call)  # noqa: B004
    if inspect.isasyncgenfunction(method):
        return await stack.enter_async_context(contextlib.asynccontextmanager(call)(**kwargs))
    if inspect.isgeneratorfunction(method):
        return stack.enter_context(contextlib.contextmanager(call)(**kwargs))
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(getattr(call, "__call__", None)):  # noqa: B004
        return await call(**kwargs)
    return await run_in_threadpool(call, **kwargs)  # as FastAPI does: a sync dependency must not block the loop


async def _message(context: _Context) -> Message:
    return context.message


async def _state(context: _Context) -> State:
    return context.state


async def _broker(context: _Context) -> Broker:
    if context.broker is None:
        raise RuntimeError("this handler asks for the Broker but was started without one")
    return context.broker


_BROKER_MEMBERS = tuple(name for name in dir(Broker) if not name.startswith("_"))


def _is_broker_type(annotation: object) -> bool:
    """A class that has every member of the :class:`Broker` protocol (``JetStreamBroker``, ``InMemoryBroker``
    or a broker of one's own): a handler parameter of that type receives the app's broker."""
    return isinstance(annotation, type) and all(hasattr(annotation, name) for name in _BROKER_MEMBERS)


def decoder_for(annotation: Any) -> Decoder:
    """A function turning a message body into ``annotation`` (validated), raising ``ValidationError``."""
    if annotation is bytes:
        return bytes
    if annotation is str:
        return lambda body: body.decode("utf-8")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_validate_json
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    return adapter.validate_json


def _reply_type(handler: Callable[..., Any]) -> Any:
    """The handler's return annotation, unless it says the handler returns nothing (or says nothing)."""
    annotated = handler if inspect.isroutine(handler) else getattr(handler, "__call__", handler)  # noqa: B004
    try:
        annotation = typing.get_type_hints(annotated).get("return")
    except Exception:  # unreadable annotations were reported by _arguments already, or concern the return only
        return None
    return None if annotation in (None, type(None), Any, object) else annotation


def _name(call: Callable[..., Any]) -> str:
    return getattr(call, "__qualname__", repr(call))
