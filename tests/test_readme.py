"""The documentation runs as written and says what the code does: the site's pages under docs/ and both
READMEs.

Every code block has a language tag. ``python`` blocks are executed: a block whose first line names a file
(``# conftest.py``, ``# app.py``, ``# test_orders.py``, ``# pytest.ini``; ``# app.py, continued`` appends
to it) is a file of that page's throwaway pytest project (pytest-asyncio's default strict mode, the testing
kit's plugin), which pytest runs; every other one runs as a script. ``sh`` blocks are syntax-checked and
their ``pip install`` extras must exist. The tables and the error tree are held to the code: broker
options, settings variables, extras, exceptions, the API reference.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import jetstream_fastapi
from jetstream_fastapi import BrokerSettings, InMemoryBroker, JetStreamBroker, JetStreamError
from jetstream_fastapi.core.options import BROKER_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
READMES = ("README.md", "README.zh-TW.md")
# The site's pages; docs/_pending/ holds notes waiting to be folded into them, not pages.
PAGES = tuple(sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md")))
DOCUMENTS = READMES + PAGES
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
PROJECT_FILE = re.compile(r"\A# ([\w-]+\.(?:py|ini|toml))\b[^\n]*\n")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README_LINES = 250


def _text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _blocks(name: str, language: str | None = None) -> list[str]:
    return [code for tag, code in FENCE.findall(_text(name)) if language is None or tag == language]


def _scripts(name: str) -> list[str]:
    return [code for code in _blocks(name, "python") if not PROJECT_FILE.match(code)]


def _project(name: str) -> dict[str, str]:
    """The files of ``name``'s pytest project: its blocks that name a file, those of one name joined."""
    files: dict[str, str] = {}
    for code in _blocks(name):
        if match := PROJECT_FILE.match(code):
            files[match.group(1)] = files.get(match.group(1), "") + code + "\n\n"
    return files


def _table(name: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after ``heading`` in document ``name``."""
    text = _text(name)
    start = text.index(heading)
    rows = re.search(r"((?:^\|.*\|\n)+)", text[start:], re.MULTILINE)
    assert rows, heading
    lines = rows.group(1).splitlines()[2:]  # without the header and the separator
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_code_block_has_a_language(document: str) -> None:
    untagged = [code.splitlines()[0] for tag, code in FENCE.findall(_text(document)) if not tag]
    assert not untagged, f"{document}: blocks without a language tag (first lines): {untagged}"


def test_both_readmes_have_the_same_code() -> None:
    english, chinese = (FENCE.findall(_text(name)) for name in READMES)
    assert [tag for tag, _ in english] == [tag for tag, _ in chinese]
    assert [code for tag, code in english if tag == "python"] == [code for tag, code in chinese if tag == "python"]


@pytest.mark.parametrize("readme", READMES)
def test_readmes_are_short(readme: str) -> None:
    # The README says what the library is, how to install it, one example and where the docs are; the
    # documentation itself is the site under docs/.
    lines = _text(readme).count("\n")
    assert lines <= README_LINES, f"{readme} has {lines} lines: move the detail into a page under docs/"
    assert "docs/" in _text(readme) or "getting-started" in _text(readme)


def test_every_python_block_is_tested() -> None:
    # Each python block is either a script or a file of its page's project; a page's project must have a
    # test (otherwise its blocks would be written and never run).
    assert sum(len(_scripts(name)) for name in DOCUMENTS) >= 20, "the docs lost their examples"
    for name in DOCUMENTS:
        files = _project(name)
        assert not files or any(file.startswith("test_") for file in files), f"{name}: project without a test"


@pytest.mark.parametrize("document", [name for name in DOCUMENTS if _scripts(name) and name != "README.zh-TW.md"])
def test_python_blocks_run_as_written(document: str, tmp_path: Path) -> None:
    # The Chinese README's python blocks are the same as the English one's (test above): running one set
    # covers both.
    for index, code in enumerate(_scripts(document)):
        script = tmp_path / f"block{index}.py"
        script.write_text(code, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
        )
        assert result.returncode == 0, f"{document} block {index} failed:\n{code}\n{result.stderr}"


@pytest.mark.parametrize("document", [name for name in DOCUMENTS if _project(name) and name != "README.zh-TW.md"])
def test_pytest_blocks_pass_in_a_strict_mode_project(document: str, tmp_path: Path) -> None:
    files = _project(document)
    assert "conftest.py" in files, f"{document}: a test project needs its conftest.py block"
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    if "pytest.ini" not in files:
        (tmp_path / "pytest.ini").write_text("[pytest]\n")  # pytest-asyncio's defaults: strict mode
    # The example app comes from the clone, as the docs say.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "mode=Mode.STRICT" in output
    assert "SKIPPED" not in output
    if "pytest.ini" in files:  # the docs show the setting that silences pytest-asyncio's warning: it must
        assert "asyncio_default_fixture_loop_scope" + '" is unset' not in output
    if "broker: Broker" in "".join(files.values()):  # the `broker` fixture: both halves ran
        assert "[memory] PASSED" in output
        assert "[jetstream] PASSED" in output


@pytest.mark.parametrize("document", DOCUMENTS)
def test_shell_blocks_are_valid_and_name_real_extras(document: str) -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for code in _blocks(document, "sh"):
        check = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True, timeout=30, check=False)
        assert check.returncode == 0, f"{document}: {check.stderr}\n{code}"
        for named in re.findall(r"pip install .*?jetstream-fastapi\[([\w,]+)\]", code):
            assert set(named.split(",")) <= extras, f"{document}: unknown extra in {named!r}"


@pytest.mark.parametrize("document", [*READMES, "docs/getting-started.md"])
def test_install_section_matches_pyproject(document: str) -> None:
    text = _text(document)
    assert text.index("pip install") < text.index("make run"), "the install section comes first"
    repository = PYPROJECT["project"]["urls"]["Repository"]
    urls = set(re.findall(r"git\+(https://\S+?)\.git", text)) | set(re.findall(r"git clone (\S+?)\.git", text))
    assert urls == {repository}
    table = {row[0].strip("`") for row in _table(document, "| extra |")}
    assert table - {"(none)", "(無)"} == set(PYPROJECT["project"]["optional-dependencies"])


def test_quickstart_is_what_ci_runs() -> None:
    for readme in READMES:
        assert "make run" in _text(readme)
        assert "make test" in _text(readme)
    assert "make test" in _text(".ci/run")


def test_options_table_names_real_broker_keywords() -> None:
    rows = _table("docs/configuration.md", "| option | default |")
    options = {row[0].strip("`") for row in rows if row[0].startswith("`")} - {"servers"}
    jetstream = BROKER_OPTIONS | set(inspect.signature(JetStreamBroker).parameters)
    assert options <= jetstream, sorted(options - jetstream)
    # One front: every broker option is an option of the in-memory broker too (connect_timeout aside).
    memory = BROKER_OPTIONS | set(inspect.signature(InMemoryBroker).parameters)
    assert options - {"connect_timeout"} <= memory, sorted(options - memory)


def test_settings_table_is_every_variable() -> None:
    rows = _table("docs/configuration.md", "| variable | type | broker option |")
    documented = {name for row in rows for name in re.findall(r"`(NATS_\w+)`", row[0])}
    fields = {f"NATS_{field.upper()}" for field in BrokerSettings.model_fields}
    assert documented == fields


def test_api_reference_names_every_public_name() -> None:
    documented = set(re.findall(r"^::: jetstream_fastapi\.(\w+)$", _text("docs/reference.md"), re.MULTILINE))
    assert set(jetstream_fastapi.__all__) <= documented, sorted(set(jetstream_fastapi.__all__) - documented)


def _exception(name: str) -> type[BaseException]:
    for module in ("jetstream_fastapi", "jetstream_fastapi.server", "jetstream_fastapi.core.handling"):
        found = getattr(importlib.import_module(module), name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
    found = getattr(builtins, name)
    assert issubclass(found, BaseException)
    return found


def _every_subclass(root: type[BaseException]) -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    pending = [root]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub.__module__.startswith("jetstream_fastapi") and sub not in found:
                found.add(sub)
                pending.append(sub)
    return found


def test_error_tree_is_the_class_hierarchy() -> None:
    readme = "docs/errors.md"
    [tree] = [code for code in _blocks(readme, "text") if code.startswith("JetStreamError\n")]
    for module in pkgutil.iter_modules(jetstream_fastapi.__path__):
        importlib.import_module(f"jetstream_fastapi.{module.name}")  # every exception class defined
    parents: list[type[BaseException]] = []
    named: set[type[BaseException]] = set()
    for line in tree.splitlines():
        match = re.match(r"^((?:[│ ] {3})*)(?:[├└]── )?(\w+)(?: \((\w+)\))?", line)
        if not line.strip() or not match:
            parents = []
            continue
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        cls = _exception(match.group(2))
        del parents[depth:]
        if parents:
            assert cls.__bases__[0] is parents[-1], f"{cls.__name__} is not a {parents[-1].__name__}"
        if match.group(3):
            assert issubclass(cls, _exception(match.group(3))), f"{cls.__name__} is not a {match.group(3)}"
        parents.append(cls)
        named.add(cls)
    missing = {cls.__name__ for cls in _every_subclass(JetStreamError) | _every_subclass(TimeoutError)} - {
        cls.__name__ for cls in named
    }
    assert not missing, f"{readme}: exceptions missing from the error tree: {sorted(missing)}"


def test_one_cpu_per_message_figure() -> None:
    # The consume figure is quoted once, on the performance page, as bench/README.md measured it (other
    # figures in µs, of other things, may stand beside it; the READMEs link there).
    everywhere = "".join(_text(name) for name in DOCUMENTS)
    number = r"(\d+(?:\.\d+)?)"
    found = re.findall(rf"{number} µs of CPU per consumed message|每則被消費訊息 {number} µs", everywhere)
    figures = [english or chinese for english, chinese in found]
    assert len(figures) == 1, figures
    # The first table of bench/README.md is the last full run; its "ours CPU µs/msg" column.
    bench = _text("bench/README.md").splitlines()
    header = next(line for line in bench if line.startswith("| scenario | N | rounds | raw msg/s"))
    column = [cell.strip() for cell in header.split("|")].index("ours CPU µs/msg")
    row = next(line for line in bench if line.startswith("| consume, no-op handler (durable pull, batch 100)"))
    measured, quoted = float(row.split("|")[column]), figures[0]
    digits = len(quoted.partition(".")[2])
    assert round(measured, digits) == float(quoted), (measured, quoted)


def test_make_docs_fails_on_a_warning() -> None:
    # mkdocs 1.6 counts for --strict only the warnings it prints: with --quiet a broken link builds the
    # site and exits 0 (measured), so the documentation build must not be quiet.
    recipe = re.search(r"^docs:.*\n((?:\t.*\n)+)", _text("Makefile"), re.MULTILINE)
    assert recipe, "the Makefile has no docs target"
    assert "mkdocs build --strict" in recipe.group(1)
    assert not re.search(r"\s(--quiet|-q)\b", recipe.group(1)), recipe.group(1)


def test_docstring_roles_render_as_links_or_code() -> None:
    # The API reference renders docstrings as Markdown: reStructuredText roles would show as raw text
    # (":class:`~jetstream_fastapi.InMemoryBroker`"). mkdocs.yml loads the griffe extension that turns them
    # into cross-references to documented names, or inline code.
    assert "docs/_hooks/rst_roles.py:RstRoles" in _text("mkdocs.yml")
    spec = importlib.util.spec_from_file_location("rst_roles", ROOT / "docs" / "_hooks" / "rst_roles.py")
    assert spec and spec.loader
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    known = roles.documented(_text("docs/reference.md"))
    assert "jetstream_fastapi.InMemoryBroker" in known
    convert = roles.convert
    assert convert(":class:`~jetstream_fastapi.InMemoryBroker`", known) == (
        "[`InMemoryBroker`][jetstream_fastapi.InMemoryBroker]"
    )
    assert convert(":class:`~jetstream_fastapi.backends.memory.broker.InMemoryBroker`", known) == (
        "[`InMemoryBroker`][jetstream_fastapi.InMemoryBroker]"
    )
    assert convert("see :mod:`.front` and :data:`PREVIEW`", known) == "see `front` and `PREVIEW`"
    assert convert(":meth:`Subscription.unsubscribe`", known) == "`Subscription.unsubscribe()`"
    assert convert(":func:`~jetstream_fastapi.jetstream_lifespan`", known) == (
        "[`jetstream_lifespan()`][jetstream_fastapi.jetstream_lifespan]"
    )
    assert convert(":class:`~jetstream_fastapi.core.options.BrokerOptions`", known) == "`BrokerOptions`"
    assert convert(":py:class:`the broker <jetstream_fastapi.JetStreamBroker>`", known) == (
        "[`the broker`][jetstream_fastapi.JetStreamBroker]"
    )
