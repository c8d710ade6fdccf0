"""A backbone of one's own, outside the repository, gets the registry's tests by being named."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# The module of docs/layout.md ("A backbone of your own"), as the page shows it, and one more class
# for the failure case.
PAGE = (ROOT / "docs" / "layout.md").read_text().split("### A backbone of your own")[1]
OWN = PAGE.split("```python\n")[1].split("```")[0] + '''

class Unused(nn.Module):  # a layer that never reaches the output gets no gradient
    examples = {"sequence": [{}]}

    def __init__(self):
        super().__init__()
        self.used, self.unused, self.out_features = nn.Linear(8, 4), nn.Linear(8, 4), 4

    def forward_features(self, x):
        return self.used(x)

    def forward(self, x):
        return self.forward_features(x).mean(dim=1)
'''


@pytest.mark.slow  # a pytest subprocess
def test_a_backbone_outside_litlab_is_tested_by_name(tmp_path):
    (tmp_path / "my_nets.py").write_text(OWN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def pytest_on(backbone: str) -> subprocess.CompletedProcess:
        name = backbone.partition(":")[2] or "Wide"
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-k", name,
             str(ROOT / "tests" / "models" / "backbones" / "test_backbones.py"), f"--backbone={backbone}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    run = pytest_on("my_nets")  # the module: what it registers
    assert run.returncode == 0, run.stdout[-3000:]
    assert "4 passed" in run.stdout  # Wide's two image shapes, in the two registry tests
    run = pytest_on("my_nets:Unused")
    assert run.returncode == 1 and "unused.weight got no gradient" in run.stdout, run.stdout[-3000:]
    run = pytest_on("my_nets:Missing")
    assert run.returncode == 2, run.stdout[-3000:]  # a collection error, naming the fix
    assert "--backbone my_nets:Missing: Missing is not a class with examples; decorate it with" in run.stdout
