"""The README's Python example runs as written (it is what new users copy first)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert [b.strip() for b in blocks[:2]] == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_readme_example_runs(capsys) -> None:
    (example,) = _python_blocks()[:1]
    exec(compile(example, str(README), "exec"), {"__name__": "readme_example"})
    score, energy_wh = (float(v) for v in capsys.readouterr().out.split()[-2:])
    assert 0.0 < score < 1.0 and energy_wh > 0.0


def test_readme_text_model_example_runs(capsys) -> None:
    """The second example: a text model fed tokenizer-style dict batches through RESQUECheck."""
    example = _python_blocks()[1]
    assert '"input_ids"' in example and "RESQUECheck" in example
    exec(compile(example, str(README), "exec"), {"__name__": "readme_text_example"})
    score = float(capsys.readouterr().out.split()[-1])
    assert 0.0 < score < 1.0
