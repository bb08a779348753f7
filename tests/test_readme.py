"""The README's Python blocks run as they are written (sections listed in SECTIONS)."""

import os
import re
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
#: Sections whose Python blocks are complete programs.
SECTIONS = ("Inspect your own model",)


def _blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_python_blocks_run(section, tmp_path, monkeypatch, capsys):
    blocks = _blocks(section)
    assert blocks, f"no Python block in README section {section!r}"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for code in blocks:  # one namespace: later blocks may use earlier names
        exec(compile(code, f"README.md ({section})", "exec"), namespace)
