"""The test suite on every supported Python: ``nox -s tests-3.12`` (or ``tests-3.11``, ``tests-3.13``; ``nox``
alone runs all three), and ``nox -s fast-3.13`` for the quick subset CI runs on the newer versions.

Interpreters are found on ``PATH`` (``python3.12``, ...) and, where missing there, through pyenv
(``PYENV_VERSION=3.13.0 pyenv which python``): the development machines have 3.12 and 3.13 under pyenv.
Arguments after ``--`` go to pytest: ``nox -s tests-3.13 -- tests/test_contract.py -x``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.11", "3.12", "3.13"]

# The fast subset: the unit tests and the contract suites on the in-memory broker, which together cover the
# front both brokers share (argument checks, errors, dead letters, each message's fate) with no server.
# Under 90 s on the 2-core CI machine.
FAST = [
    "tests/test_driver.py",
    "tests/test_clock.py",
    "tests/test_handlers.py",
    "tests/test_dependencies.py",
    "tests/test_memory_faults.py",
    "tests/test_recurring_clock.py",
    "tests/test_settings.py",
    "tests/test_imports.py",
    "tests/test_public_api.py",
    "tests/test_flow.py",
    "tests/test_fastapi.py",
    "tests/test_contract.py",
    "tests/test_contract_ack_wait.py",
    "tests/test_contract_batches.py",
    "tests/test_dead_letters.py",
    "tests/test_delayed.py",
    "tests/test_contract_pause.py",
    "tests/test_publish_options.py",
    "tests/test_recurring.py",
    "tests/test_requests.py",
    "tests/test_contract_seam.py",
]

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]


def _pyenv_interpreters() -> None:
    """Put pyenv's interpreters of the supported versions on ``PATH`` where ``python3.X`` is not there yet."""
    if shutil.which("pyenv") is None:
        return
    installed = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False).stdout
    for version in PYTHONS:
        # pyenv's shims answer for every version it has but run only the selected one: not a find.
        on_path = shutil.which(f"python{version}")
        if on_path and "shims" not in Path(on_path).parts:
            continue
        # The newest patch release pyenv has of that minor version (3.12.1, 3.13.0, ...).
        candidates = [line.strip() for line in installed.splitlines() if line.strip().startswith(f"{version}.")]
        if not candidates:
            continue
        newest = max(candidates, key=lambda name: tuple(int(part) for part in name.split(".") if part.isdigit()))
        found = subprocess.run(
            ["pyenv", "which", "python"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYENV_VERSION": newest},
        ).stdout.strip()
        if found:
            os.environ["PATH"] = f"{Path(found).parent}{os.pathsep}{os.environ['PATH']}"


_pyenv_interpreters()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite, as ``make test`` runs it (without the linters, which run on one version)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHONS)
def fast(session: nox.Session) -> None:
    """The unit tests and the memory-broker contract suites: the quick check of a Python version."""
    # What these tests import, not the whole `test` extra (linters, browser, benchmark tools): the install
    # is a good part of the subset's time.
    session.install("-e", ".[testing,example,otel,metrics]", "pytest-timeout")
    session.run("python", "-m", "pytest", "-q", "-k", "not jetstream", *(session.posargs or FAST))
