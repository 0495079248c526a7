"""The README's reward-function examples run as printed (verl and OpenRLHF argument shapes)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[3] / "docs" / "library.md"  # the examples moved from README.md


@pytest.mark.parametrize("marker", ["def compute_score", "def reward_func", "std_filter.filter_prompts"])
def test_readme_reward_example_runs(marker, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if marker in b)
    r = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
