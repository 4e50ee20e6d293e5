"""The documentation: its generated presets table lists every preset, and the code of "Write
your own algorithm" runs as printed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from fastadapt.config import list_presets, load_preset
from fastadapt.engine import build

ROOT = Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location(
        "presets_table", ROOT / "docs_hooks" / "presets_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_page_gets_a_row_per_preset_with_its_paper_number() -> None:
    hook = _hook()
    page = (ROOT / "docs" / "reproduce.md").read_text(encoding="utf-8")
    assert hook.MARKER in page
    rendered = hook.on_page_markdown(page)
    assert hook.MARKER not in rendered
    for name in list_presets():
        row = next(line for line in rendered.splitlines() if line.startswith(f"| `{name}` |"))
        for metric, value in load_preset(name).reference.values.items():
            assert f"{metric} {value:g}" in row


def test_every_page_in_the_navigation_exists() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = re.findall(r":\s*([\w/-]+\.md)\s*$", config, flags=re.MULTILINE)
    assert "own-algorithm.md" in pages and "reference/inference.md" in pages
    assert all((ROOT / "docs" / page).is_file() for page in pages)


def test_write_your_own_algorithm_code_runs(monkeypatch, capsys) -> None:
    page = (ROOT / "docs" / "own-algorithm.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) == 3
    monkeypatch.setattr(build, "ALGORITHMS", dict(build.ALGORITHMS))
    namespace: dict = {"__name__": "own_algorithm"}
    for block in blocks:
        exec(compile(block, "own-algorithm.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "'accuracy'" in printed
    assert "torch.Size([6, 3])" in printed and "SoftNearestNeighbour" in printed
