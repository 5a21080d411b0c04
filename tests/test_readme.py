"""The README's Python examples run as written."""

import re
from pathlib import Path


def test_readme_python_blocks_run():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"(<!-- not-run([^>]*)-->\n)?```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == text.count("```python")  # every Python block is seen
    runnable = [code for marker, _, code in blocks if not marker]
    reasons = [why.strip(" :") for marker, why, _ in blocks if marker]
    assert len(runnable) >= 1  # the core example at least
    assert all(reasons), "each not-run block says why"
    for block in runnable:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_quick_start_matches_ci():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert "./test.sh" in readme and "./run.sh" in readme
    assert "./test.sh" in (root / ".ci" / "run").read_text()
