"""Every Python block of the README runs as it is written."""

import os
import re
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

README = Path(__file__).resolve().parents[2] / "README.md"


def _all_blocks() -> list[tuple[str, str]]:
    """Every ```python block of the README, in order, with the section it stands in."""
    text = README.read_text(encoding="utf-8")
    out, section = [], "(top)"
    for part in re.split(r"(?m)^(## .*)$", text):
        if part.startswith("## "):
            section = part[3:].strip()
            continue
        out += [(section, code) for code in re.findall(r"```python\n(.*?)```", part, flags=re.S)]
    return out


def test_every_readme_python_block_runs(tmp_path, monkeypatch, capsys):
    """The blocks run in order in one namespace, as a reader pasting them would."""
    blocks = _all_blocks()
    assert len(blocks) >= 3, "the README lost its Python examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for section, code in blocks:
        exec(compile(code, f"README.md ({section})", "exec"), namespace)
