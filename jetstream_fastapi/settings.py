"""``BrokerSettings``: a :class:`~jetstream_fastapi.JetStreamBroker` configured from ``NATS_*`` environment variables.

Values come from the environment and, when present, from a ``.env`` file in the working directory
(environment variables win); keyword arguments win over both::

    broker = BrokerSettings().broker()                # NATS_URL, NATS_CREDS_FILE, NATS_BATCH_SIZE, ...
    broker = BrokerSettings(_env_file="prod.env").broker(streams=[...])

Only the options that are set reach the broker, so its own defaults stay the single source of defaults.
A ``NATS_*`` variable that is not one of these settings (a misspelt ``NATS_BACH_SIZE``, another tool's
``NATS_CONTEXT``) is ignored with an :class:`UnknownSettingWarning` that names the nearest valid variable.
Secrets (``NATS_TOKEN``, ``NATS_USER``, ``NATS_PASSWORD``, and the user info of a ``NATS_URL``) never show
in ``repr``; a missing or unusable credentials or TLS file is reported with its variable and path only.
"""

from __future__ import annotations

import difflib
import os
import ssl
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .backends.jetstream.broker import JetStreamBroker
from .backends.jetstream.connection import check_server_urls
from .core.options import BROKER_OPTIONS
from .core.redaction import redact, redact_url, url_secrets
from .errors import InvalidArgumentError

# Settings passed to JetStreamBroker under their own name, when set: the broker options (the others are
# read into nats.connect options below).
_BROKER_OPTIONS = tuple(sorted(BROKER_OPTIONS))
_FILES = ("creds_file", "tls_ca_file", "tls_cert_file", "tls_key_file")


class UnknownSettingWarning(UserWarning):
    """A ``NATS_*`` variable (in the environment or the ``.env`` file) that is no :class:`BrokerSettings`
    field, so it is ignored: most likely a misspelt name. Silence it for another tool's variables with
    ``warnings.filterwarnings("ignore", category=UnknownSettingWarning)``."""


def _encrypted_key() -> NoReturn:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ValueError("the key is encrypted; give an unencrypted key")


class BrokerSettings(BaseSettings):
    """Broker settings read from ``NATS_*`` environment variables and an optional ``.env`` file.

    Each field ``x`` is read from ``NATS_X`` (case-insensitive); empty variables count as unset. Invalid
    values raise pydantic's :class:`~pydantic.ValidationError` when the settings are created.
    """

    model_config = SettingsConfigDict(
        env_prefix="NATS_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        # A ValidationError never repeats the value: NATS_URL may carry a password, NATS_TOKEN is one.
        hide_input_in_errors=True,
    )

    url: str | None = None
    """``NATS_URL``: the server URL, or several separated by commas (a cluster)."""
    creds_file: Path | None = None
    """``NATS_CREDS_FILE``: a ``.creds`` file (user JWT and NKey seed), passed as ``user_credentials``."""
    token: SecretStr | None = None
    """``NATS_TOKEN``: an authentication token."""
    user: SecretStr | None = None
    """``NATS_USER``: a user name (with ``NATS_PASSWORD``)."""
    password: SecretStr | None = None
    """``NATS_PASSWORD``: the user's password."""
    tls_ca_file: Path | None = None
    """``NATS_TLS_CA_FILE``: PEM certificates of the CAs to trust instead of the system's."""
    tls_cert_file: Path | None = None
    """``NATS_TLS_CERT_FILE``: a PEM client certificate (mutual TLS); may hold the key too."""
    tls_key_file: Path | None = None
    """``NATS_TLS_KEY_FILE``: the client certificate's unencrypted PEM private key."""
    batch_size: PositiveInt | None = None
    """``NATS_BATCH_SIZE``: messages fetched per pull request."""
    fetch_wait: PositiveFloat | None = None
    """``NATS_FETCH_WAIT``: seconds a pull request waits for messages."""
    concurrency: PositiveInt | None = None
    """``NATS_CONCURRENCY``: handlers running at once per subscription."""
    ack_wait: PositiveFloat | None = None
    """``NATS_ACK_WAIT``: seconds before an unacknowledged message is redelivered."""
    max_deliver: int | None = None
    """``NATS_MAX_DELIVER``: deliveries of a message before it is dead-lettered (-1: unlimited)."""
    max_ack_pending: PositiveInt | None = None
    """``NATS_MAX_ACK_PENDING``: unacknowledged messages a consumer may have across all its instances."""
    dead_letters: bool | None = None
    """``NATS_DEAD_LETTERS``: republish terminated messages to the dead-letter stream (``true``/``false``)."""
    dead_letter_max_age: PositiveFloat | None = None
    """``NATS_DEAD_LETTER_MAX_AGE``: seconds the dead-letter stream keeps a letter (when it creates it)."""
    dead_letter_max_bytes: PositiveInt | None = None
    """``NATS_DEAD_LETTER_MAX_BYTES``: most bytes of the dead-letter stream (when it creates it)."""
    deliver_policy: Literal["all", "new", "last"] | None = None
    """``NATS_DELIVER_POLICY``: where a new consumer starts (``all``, ``new``, ``last``)."""
    inactive_threshold: PositiveFloat | None = None
    """``NATS_INACTIVE_THRESHOLD``: seconds before the server removes an abandoned ephemeral consumer."""
    handler_timeout: PositiveFloat | None = None
    """``NATS_HANDLER_TIMEOUT``: seconds a handler may run before it is cancelled and its message retried."""
    auto_provision: bool | None = None
    """``NATS_AUTO_PROVISION``: create a stream for subjects no stream captures (``true``/``false``)."""
    stream_mismatch: Literal["error", "warn", "update"] | None = None
    """``NATS_STREAM_MISMATCH``: what to do with a declared stream that differs on the server."""
    connect_timeout: PositiveFloat | None = None
    """``NATS_CONNECT_TIMEOUT``: seconds ``connect()`` may take."""
    publish_timeout: PositiveFloat | None = None
    """``NATS_PUBLISH_TIMEOUT``: seconds to wait for a PubAck."""
    shutdown_timeout: PositiveFloat | None = None
    """``NATS_SHUTDOWN_TIMEOUT``: seconds running handlers get to finish on unsubscribe or disconnect."""
    tracing: bool | None = None
    """``NATS_TRACING``: OpenTelemetry spans for publishes and handler runs (``true``/``false``)."""
    metrics: bool | None = None
    """``NATS_METRICS``: record the Prometheus and OpenTelemetry metrics (``true``/``false``)."""
    name: str | None = Field(default=None, min_length=1)
    """``NATS_NAME``: the connection name shown by the server's monitoring."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise self._by_variable(error) from None

    @classmethod
    def _by_variable(cls, error: ValidationError) -> ValidationError:
        """``error`` with each field named by its variable (``NATS_URL``, not ``url``): what the user sets."""
        details: list[Any] = [
            {key: value for key, value in line.items() if key in ("type", "input", "ctx")}
            | {"loc": (cls._variable(str(line["loc"][0])), *line["loc"][1:]) if line["loc"] else ()}
            for line in error.errors(include_url=False)
        ]
        return ValidationError.from_exception_data(error.title, details, hide_input=True)

    @classmethod
    def _variable(cls, field: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The standard sources, unchanged (the .env file is the one ``_env_file`` names, if given), after a
        # look at the NATS_* names in them that no field reads.
        for source in (env_settings, dotenv_settings):
            if isinstance(source, EnvSettingsSource):
                env_file = getattr(source, "env_file", None)
                where = "the environment" if env_file is None else f"the .env file {env_file}"
                cls._warn_unknown(source.env_vars, where)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @classmethod
    def _warn_unknown(cls, names: Iterable[str], where: str) -> None:
        prefix = cls._variable("")
        known = {cls._variable(field).removeprefix(prefix): cls._variable(field) for field in cls.model_fields}
        for name in sorted({name.upper() for name in names}):
            if not name.startswith(prefix) or name in known.values():
                continue
            # Compared without the prefix, which every name shares: NATS_BACH_SIZE -> NATS_BATCH_SIZE.
            nearest = difflib.get_close_matches(name.removeprefix(prefix), known, n=1)
            hint = f"did you mean {known[nearest[0]]}?" if nearest else "see BrokerSettings for the variables"
            warnings.warn(
                f"{name} (in {where}) is not a BrokerSettings variable and is ignored; {hint}",
                UnknownSettingWarning,
                stacklevel=2,
            )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            servers = _split(value)
            if not servers:
                raise ValueError("names no server")
            try:
                check_server_urls(servers)  # an http:// URL fails here, not as a DNS error at connect
            except InvalidArgumentError as error:
                # Checked piece by piece: a password holding a "," reaches the check cut in two.
                raise ValueError(redact(str(error), url_secrets(value))) from None
        return value

    @field_validator(*_FILES)
    @classmethod
    def _check_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        variable = cls._variable(str(info.field_name))
        if not value.is_file():
            raise ValueError(f"{variable}: no such file: {value}")
        if not os.access(value, os.R_OK):
            raise ValueError(f"{variable}: file not readable: {value}")
        return value

    @field_validator("max_deliver")
    @classmethod
    def _check_max_deliver(cls, value: int | None) -> int | None:
        if value is not None and value < 1 and value != -1:
            raise ValueError("must be at least 1, or -1 for unlimited")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> BrokerSettings:
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError(f"{self._variable('tls_key_file')} needs {self._variable('tls_cert_file')}")
        self.ssl_context()  # load the files now, so that a bad one fails here rather than at connect
        return self

    @property
    def servers(self) -> list[str] | None:
        """The server URLs of ``NATS_URL``, or ``None`` when it is not set (the broker's default)."""
        return None if self.url is None else _split(self.url)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context from the ``NATS_TLS_*`` files, or ``None`` when none is set.

        Raises :class:`~jetstream_fastapi.InvalidArgumentError` naming the variable and path (never the
        file's content) when a file cannot be loaded.
        """
        if self.tls_ca_file is None and self.tls_cert_file is None:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
        except (OSError, ValueError) as error:
            self._unusable(error, "tls_ca_file")
        if self.tls_cert_file is not None:
            try:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file, password=_encrypted_key)
            except (OSError, ValueError) as error:
                self._unusable(error, "tls_cert_file", "tls_key_file")
        return context

    def _unusable(self, error: BaseException, *fields: str) -> NoReturn:
        files = ", ".join(f"{self._variable(f)}={getattr(self, f)}" for f in fields if getattr(self, f) is not None)
        # OpenSSL's reason ("[X509] PEM lib", "No such file or directory"), never what the file holds.
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise InvalidArgumentError(f"cannot load {files}: {type(error).__name__}: {reason}") from None

    def connect_options(self) -> dict[str, Any]:
        """The ``nats.connect`` options that are set: credentials, token, user and password, TLS, name."""
        return self._connect_options(tls=True)

    def _connect_options(self, *, tls: bool) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        for field in ("token", "user", "password"):
            secret: SecretStr | None = getattr(self, field)
            if secret is not None:
                options[field] = secret.get_secret_value()
        context = self.ssl_context() if tls else None  # not loaded when a ``tls`` override replaces it
        if context is not None:
            options["tls"] = context
        if self.name is not None:
            options["name"] = self.name
        return options

    def broker(self, **overrides: Any) -> JetStreamBroker:
        """A new, unconnected :class:`~jetstream_fastapi.JetStreamBroker` from these settings.

        ``overrides`` are any :class:`JetStreamBroker` arguments (``servers``, ``streams``, ``backoff``,
        connect options, ...) and win over the settings.
        """
        options: dict[str, Any] = {
            name: value for name in _BROKER_OPTIONS if (value := getattr(self, name, None)) is not None
        }
        options.update(self._connect_options(tls="tls" not in overrides))
        options.update(overrides)
        servers = options.pop("servers", self.servers)
        if servers is None:
            return JetStreamBroker(**options)
        return JetStreamBroker(servers, **options)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Only what is set, and the URL without the user, password or token it may carry.
        for name, value in super().__repr_args__():
            if value is None:
                continue
            yield name, (_shown(value) if name == "url" else value)


def _shown(url: str) -> str:
    """``NATS_URL`` as texts may show it: each URL without its user info."""
    return redact(", ".join(map(redact_url, _split(url))), url_secrets(url))


def _split(url: str) -> list[str]:
    return [part.strip() for part in url.split(",") if part.strip()]
