"""docker-compose.yml and the Dockerfile, checked without Docker (these machines have none).

The compose file is parsed and held to what the README promises: NATS with JetStream on a persistent volume
and a health check, pinned to the nats-server version the tests run; the app wired by NATS_URL, started
once NATS is healthy, with its readiness probe as health check. The Dockerfile's install step is replayed
on the files it copies, so a file the build needs but the image lacks fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from jetstream_fastapi.server import find_nats_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return loaded


def _version(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    assert match, text
    return tuple(int(part) for part in match.groups() if part is not None)


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"nats", "app", "prometheus"}
    # Prometheus is opt-in: a plain `docker compose up` starts NATS and the app only.
    assert compose["services"]["prometheus"]["profiles"] == ["metrics"]
    assert "profiles" not in compose["services"]["nats"]
    assert "profiles" not in compose["services"]["app"]


def test_prometheus_scrapes_the_metrics_route_of_the_app(compose: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient

    from example_app.app import create_app
    from jetstream_fastapi import InMemoryBroker

    prometheus = compose["services"]["prometheus"]
    assert len(prometheus["image"].split(":")[1].split(".")) == 3, "pin a full version"
    [volume] = prometheus["volumes"]
    source, mounted_at, mode = volume.split(":")
    assert mode == "ro"
    assert mounted_at in " ".join(prometheus["command"])
    config = yaml.safe_load((ROOT / source).read_text(encoding="utf-8"))
    [job] = config["scrape_configs"]
    [targets] = [group["targets"] for group in job["static_configs"]]
    port = str(compose["services"]["app"]["environment"]["PORT"])
    assert targets == [f"app:{port}"]  # the compose service name and the app's port
    with TestClient(create_app(InMemoryBroker())) as client:
        scraped = client.get(job["metrics_path"])
    assert scraped.status_code == 200
    assert "jetstream_up" in scraped.text
    assert prometheus["depends_on"]["app"]["condition"] == "service_healthy"


def test_nats_is_the_version_the_tests_run(compose: dict[str, Any]) -> None:
    image = compose["services"]["nats"]["image"]
    name, tag = image.split(":")
    assert name == "nats"
    assert tag.endswith("-alpine")  # has wget, for the health check
    tested = subprocess.run(
        [find_nats_server(), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    print(f"compose: {image}; tests: {tested.strip()}")
    assert _version(tag)[:2] == _version(tested)[:2]
    assert len(_version(tag)) == 3, "pin a full version, not a moving minor tag"


def test_nats_runs_jetstream_on_the_volume_with_a_health_check(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    command = nats["command"]
    assert "-js" in command
    store = command[command.index("-sd") + 1]
    monitor_port = command[command.index("-m") + 1]
    [volume] = nats["volumes"]
    name, mounted_at = volume.split(":")
    assert mounted_at == store
    assert name in compose["volumes"]
    check = " ".join(nats["healthcheck"]["test"])
    assert f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true" in check
    assert nats["healthcheck"]["retries"] >= 1


def test_app_is_wired_to_nats_and_probed_for_readiness(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    env = app["environment"]
    assert env["NATS_URL"] == "nats://nats:4222"  # the service name, the client port
    assert env["HOST"] == "0.0.0.0"
    port = str(env["PORT"])
    assert f"127.0.0.1:{port}:{port}" in app["ports"]
    assert app["depends_on"]["nats"]["condition"] == "service_healthy"
    check = " ".join(app["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/health/ready" in check
    # Longer than the broker's default shutdown_timeout (10 s), so handlers finish before a SIGKILL.
    assert int(app["stop_grace_period"].removesuffix("s")) > 10
    assert app["build"] == "."


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_installs_the_library_before_the_app_is_copied() -> None:
    steps = _instructions()
    install = next(index for index, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args)
    copied_before = [args.split()[0] for op, args in steps[:install] if op == "COPY"]
    assert not [source for source in copied_before if "example_app" in source], "example_app in the package build"
    copied_after = [args for op, args in steps[install:] if op == "COPY"]
    assert any(args.startswith("example_app") for args in copied_after)
    assert steps[-1] == ("CMD", '["python", "-m", "example_app"]')  # exec form: python gets SIGTERM


def test_dockerfile_copies_what_the_build_needs(tmp_path: Path) -> None:
    # Replay the install step's build on exactly the files copied before it.
    steps = _instructions()
    install = next(index for index, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args)
    context = tmp_path / "src"
    context.mkdir()
    for op, args in steps[:install]:
        if op != "COPY":
            continue
        *sources, destination = args.split()
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, context / destination)  # "./": into the folder
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BuildBackendWarning" not in result.stderr, result.stderr  # e.g. "Pattern 'LICENSE' did not match"
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"jetstream_fastapi", wheel.name.split("-py3")[0] + ".dist-info"}
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_dockerignore_keeps_the_build_context_small_but_complete() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".venv" in ignored
    assert ".git" in ignored
    for needed in ("pyproject.toml", "README.md", "LICENSE", "jetstream_fastapi", "example_app"):
        assert needed not in ignored


def test_the_orders_database_is_on_a_volume_the_app_user_owns(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    database = app["environment"]["ORDERS_DB"]
    [volume] = app["volumes"]
    name, mounted_at = volume.split(":")
    assert name in compose["volumes"]
    assert database.startswith(mounted_at + "/")  # the orders and the outbox's events survive a restart
    steps = _instructions()
    assert any(op == "RUN" and f"chown app {mounted_at}" in args for op, args in steps)
