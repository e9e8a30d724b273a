"""The README's Python example runs as written (with ``MyNet`` and ``my_dataset`` supplied)."""
import copy
import re
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import recon
from recon.zoo.models import FmnistAlexNet

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_compresses_and_saves(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(block for block in blocks if "recon.compress" in block)
    assert len(example.strip().splitlines()) <= 8
    monkeypatch.chdir(tmp_path)
    # a model with layers worth compressing (a tiny one keeps every layer dense: nothing pays)
    dataset = TensorDataset(torch.randn(128, 1, 28, 28), torch.zeros(128, dtype=torch.long))
    namespace = {"MyNet": FmnistAlexNet, "my_dataset": dataset}
    exec(compile(example, "README.md", "exec"), namespace)
    saved = [path for path in tmp_path.rglob("*.h5")]
    assert len(saved) == 1
    model = recon.apply_bases(copy.deepcopy(namespace["model"]), saved[0])
    assert any(isinstance(module, recon.LowRankModule) for module in model.modules())
