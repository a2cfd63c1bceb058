"""Secrets out of every text: the one redaction behind errors, logs, ``repr``, settings errors, the AsyncAPI
document, the CLI and health answers.

A server URL may carry a user and password or a token: ``nats://user:password@host:4222``,
``nats://token@host``, ``user:password@host`` (nats-py assumes ``nats://``). Generated passwords hold
``/ @ : ? # + =`` (base64 does): ``urlsplit`` ends the authority at the first ``/``, ``?`` or ``#``, and a
pattern stopping at the first ``@`` shows the rest of a password holding one. So the user info here is
everything between the scheme and the *last* ``@``: a path holding an ``@`` is redacted too, the safe
mistake. In free text (a nats-py error, a list of URLs) a URL runs from its scheme to the next whitespace or
the next URL; a configured URL's user, password and token are also replaced wherever they appear alone
(:func:`url_secrets`). Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

REDACTED = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# A scheme starts a URL only at the start of the text, after whitespace, a separator or a quote: not inside
# a password such as "a:b://c" (checked with a negative look-behind, which also matches at the start).
_URL_START = re.compile(r"(?<![^\s,;'\"(\[<=])[A-Za-z][A-Za-z0-9+.-]*://")
_MIN_SECRET = 3
"""Shorter secrets are not replaced in free text: hiding every "a" would garble the text and hide nothing."""


def split_url(url: str) -> tuple[str, str, str]:
    """``(scheme, userinfo, rest)`` of one server URL: the scheme with its ``://`` (``""`` without one), the
    user info up to the last ``@`` (``""`` when there is none), and the host, port and path after it."""
    match = _SCHEME.match(url)
    scheme = match.group() if match else ""
    userinfo, at, rest = url[len(scheme) :].rpartition("@")
    return (scheme, userinfo, rest) if at else (scheme, "", rest)


def redact_url(url: str) -> str:
    """One server URL without the user, password or token it may carry: ``nats://***@host:4222``."""
    scheme, userinfo, rest = split_url(url)
    return f"{scheme}{REDACTED}@{rest}" if userinfo else url


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the user info of every URL in it, and each of ``secrets``, replaced by ``***``."""
    # Longest first, so that a password containing a shorter secret is hidden whole.
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    if "@" not in text:
        return text
    parts: list[str] = []
    end = 0
    for start, stop in _url_spans(text):
        parts += (text[end:start], redact_url(text[start:stop]))
        end = stop
    parts.append(text[end:])
    return "".join(parts)


def url_secrets(urls: str | Iterable[str]) -> set[str]:
    """The user info of each URL (of every URL in a text such as ``NATS_URL``), its user, password or token
    alone (the text of an error may name one without the URL), percent-decoded as well."""
    texts = [urls] if isinstance(urls, str) else list(urls)
    found: set[str] = set()
    for text in texts:
        userinfos = [split_url(text[start:stop])[1] for start, stop in _url_spans(text)]
        if not _URL_START.search(text):
            userinfos.append(split_url(text)[1])  # a URL without a scheme: user:password@host
        for userinfo in filter(None, userinfos):
            # A "," too: NATS_URL is split at commas, so a password holding one reaches a check in pieces.
            pieces = {userinfo, *re.split("[:,]", userinfo)}
            found |= pieces | {unquote(piece) for piece in pieces}
    return {secret for secret in found if secret}


def _url_spans(text: str) -> list[tuple[int, int]]:
    """Where each URL of ``text`` starts and ends (at whitespace or at the next URL)."""
    starts = [match.start() for match in _URL_START.finditer(text)]
    spans = []
    for start, following in zip(starts, [*starts[1:], len(text)], strict=False):
        space = re.search(r"\s", text[start:following])
        spans.append((start, start + space.start() if space else following))
    return spans
