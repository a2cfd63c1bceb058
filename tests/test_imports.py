"""The contract depends on nothing: importing it loads no third-party module."""

from __future__ import annotations

import json
import subprocess
import sys

import jetstream_fastapi

FORBIDDEN = ("nats", "fastapi", "starlette", "pydantic", "anyio")


def _loaded_after(statement: str) -> set[str]:
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in json.loads(out)}


def test_the_contract_imports_only_the_standard_library() -> None:
    for statement in (
        "import jetstream_fastapi.driver",
        "from jetstream_fastapi import Message, Retry, Reject, JetStreamError, DeadLetter",
    ):
        loaded = _loaded_after(statement)
        assert not loaded & set(FORBIDDEN), (statement, sorted(loaded & set(FORBIDDEN)))


def test_the_check_sees_a_third_party_import() -> None:
    assert "fastapi" in _loaded_after("from jetstream_fastapi import ConsumerRouter")
    assert "nats" in _loaded_after("from jetstream_fastapi import JetStreamBroker")


def test_every_public_name_resolves() -> None:
    for name in jetstream_fastapi.__all__:
        assert getattr(jetstream_fastapi, name) is not None, name
    assert set(jetstream_fastapi.__all__) <= set(dir(jetstream_fastapi))
