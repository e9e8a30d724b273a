"""Fine-tuning trains the low-rank factors (or everything) and saves a loadable state dict."""
import copy

import torch

from recon import apply_bases, zoo
from recon.finetune import finetune, main as finetune_main
from recon.modules import LowRankExpConv
from recon.store import BasesFile, model_sha256, write_bases
from recon.fitting import FitSettings, fit_layer


def bases_file(model, tmp_path):
    approx = copy.deepcopy(model)
    layer, _ = fit_layer(model, approx, "conv3", 8, FitSettings(mode="filter"), None, (7, 7))
    return write_bases(tmp_path / "b.h5", BasesFile("fmnist-alexnet", model_sha256(model), {"conv3": layer}))


def test_only_factors_change_and_history_is_reported(model, tmp_path):
    low = apply_bases(copy.deepcopy(model), bases_file(model, tmp_path))
    before = {k: v.clone() for k, v in low.state_dict().items()}
    history = finetune(low, 1, 1e-3, "factors", limit=512, test_limit=500, report=lambda line: None)
    assert len(history) == 2 and all(0 <= a <= 1 for a in history)
    after = low.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("conv3.") for k in changed)
    assert isinstance(low.conv3, LowRankExpConv)


def test_cli_saves_state_dict_that_loads(model, tmp_path, capsys):
    path = bases_file(model, tmp_path)
    out = tmp_path / "ft.pt"
    assert finetune_main(["--bases", str(path), "--epochs", "1", "--limit", "256", "--train", "all",
                          "--out", str(out)]) == 0
    fresh = apply_bases(zoo.load_model("fmnist-alexnet"), path)
    fresh.load_state_dict(torch.load(out, weights_only=True))
    assert "saved" in capsys.readouterr().out
    assert finetune_main(["--bases", str(path), "--epochs", "0"]) == 2
