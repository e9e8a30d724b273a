"""The README's Python example runs as written (with ``MyNet`` and ``my_dataset`` supplied)."""
import copy
import re
from pathlib import Path

import pytest

import recon
from recon import data, zoo

README = Path(__file__).resolve().parent.parent / "README.md"


class AsDicts:
    """A dataset whose samples are dicts, as Hugging Face datasets give them."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return {"x": image, "label": label}


@pytest.mark.slow
@pytest.mark.dataset
def test_readme_python_example_compresses_and_saves(tmp_path, monkeypatch):
    """Run with a dataset of dicts, as Hugging Face gives them (the (image, label) pairs of a
    TensorDataset go through the same calls everywhere else in the suite)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(block for block in blocks if "recon.compress" in block)
    assert len(example.strip().splitlines()) <= 8
    monkeypatch.chdir(tmp_path)
    # a trained model with layers worth compressing and its real data (a tiny model keeps every
    # layer dense, since nothing pays; random weights have no low-rank structure to keep)
    dataset = data.dataset("train", limit=128)
    namespace = {"MyNet": lambda: zoo.load_model("fmnist-alexnet"),
                 "my_dataset": AsDicts(dataset)}
    exec(compile(example, "README.md", "exec"), namespace)
    saved = [path for path in tmp_path.rglob("*.h5")]
    assert len(saved) == 1
    model = recon.apply_bases(copy.deepcopy(namespace["model"]), saved[0])
    assert any(isinstance(module, recon.LowRankModule) for module in model.modules())
