"""The README's Python example runs as written (with ``MyNet`` and ``my_dataset`` supplied)."""
import copy
import re
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import recon
from tests.fixture_models import Tiny

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_compresses_and_saves(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(block for block in blocks if "recon.compress" in block)
    assert len(example.strip().splitlines()) <= 8
    monkeypatch.chdir(tmp_path)
    dataset = TensorDataset(torch.randn(64, 3, 10, 10), torch.zeros(64, dtype=torch.long))
    namespace = {"MyNet": Tiny, "my_dataset": dataset}
    exec(compile(example, "README.md", "exec"), namespace)
    saved = [path for path in tmp_path.rglob("*.h5")]
    assert len(saved) == 1
    model = recon.apply_bases(copy.deepcopy(namespace["model"]), saved[0])
    assert any(isinstance(module, recon.LowRankModule) for module in model.modules())
