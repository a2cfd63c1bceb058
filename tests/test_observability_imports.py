"""Without ``opentelemetry-api`` and ``prometheus_client`` the broker works and imports neither; with
``tracing=False`` and no ``prometheus_client`` it takes the plain path (no observer at all)."""

from __future__ import annotations

import json
import subprocess
import sys

# A meta path finder that makes the named top-level packages missing, then a publish and a handled message.
SCRIPT = """
import asyncio, importlib.abc, json, sys

BLOCKED = set(sys.argv[1].split(","))

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from jetstream_fastapi import InMemoryBroker

async def main():
    handled = asyncio.Event()
    async def handler(message):
        handled.set()
    async with InMemoryBroker(tracing=sys.argv[2] == "on") as broker:
        await broker.subscribe("plain", handler)
        await broker.publish("plain", b"x")
        await asyncio.wait_for(handled.wait(), 5)
        await broker.wait_until_idle()
        observer = broker._observer
    loaded = sorted({name.split(".")[0] for name in sys.modules} | {n for n in sys.modules if "jetstream" in n})
    print(json.dumps({"observer": observer is not None, "loaded": loaded}))

asyncio.run(main())
"""


def _run(blocked: str, tracing: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, blocked, tracing], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_neither_installed_nothing_imported_and_no_observer() -> None:
    result = _run("opentelemetry,prometheus_client", "on")
    assert result["observer"] is False
    assert not {"opentelemetry", "prometheus_client"} & set(result["loaded"])  # type: ignore[arg-type]


def test_tracing_off_without_prometheus_takes_the_plain_path() -> None:
    result = _run("prometheus_client", "off")
    assert result["observer"] is False
    # opentelemetry.metrics is asked whether an SDK meter provider is set (none is); no span code loads.
    assert "jetstream_fastapi.observability.tracing" not in result["loaded"]  # type: ignore[operator]


def test_the_check_sees_the_imports_when_installed() -> None:
    result = _run("nothing", "on")
    assert result["observer"] is True
    assert {"opentelemetry", "prometheus_client"} <= set(result["loaded"])  # type: ignore[arg-type]
