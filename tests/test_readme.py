"""The README's Python examples run as written (both languages), so the docs cannot drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _blocks(name: str) -> list[str]:
    return BLOCK.findall((ROOT / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("readme", ["README.md", "README.zh-TW.md"])
def test_readme_python_blocks_run(readme: str, tmp_path: Path) -> None:
    blocks = _blocks(readme)
    assert len(blocks) >= 2, f"{readme} lost its examples"
    for index, block in enumerate(blocks):
        script = tmp_path / f"block{index}.py"
        script.write_text(block, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
        )
        assert result.returncode == 0, f"{readme} block {index} failed:\n{block}\n{result.stderr}"


def test_readme_quickstart_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
