"""recon.fit and recon.evaluate end to end, and their answers to bad input."""
import copy
import re

import h5py
import numpy as np
import pytest
import torch

from recon import apply_bases, data, fit, zoo
from recon.evaluate import accuracy
from recon.evaluate import main as evaluate_main
from recon.store import read_bases

TINY = "tests.fixture_models:tiny"


def run_fit(capsys, *args):
    code = fit.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_fit_on_real_data_then_apply_to_fresh_model(tmp_path, capsys):
    out = tmp_path / "b.h5"
    code, stdout, _ = run_fit(capsys, "--layer", "conv2", "--bases", "24", "--samples", "500",
                              "--patches-per-image", "8", "--out", str(out))
    assert code == 0
    assert "conv2" in stdout and "data err" in stdout
    layer = read_bases(out).layers["conv2"]
    assert layer.mode == "data" and layer.scheme == 2 and layer.num_bases == 24
    assert 0 <= layer.data_rel_error < layer.filter_rel_error
    fresh = zoo.load_model("fmnist-alexnet")
    dense = copy.deepcopy(fresh)
    apply_bases(fresh, out)
    assert type(fresh.conv2).__name__ == "Scheme2Conv"
    subset = data.loader("test", batch_size=500, limit=1000)
    assert accuracy(fresh, subset) >= accuracy(dense, subset) - 0.02
    code = evaluate_main(["--bases", str(out), "--limit", "500", "--repeats", "2"])
    assert code == 0
    report = capsys.readouterr().out
    assert "whole model" in report and "channels_last" in report and "conv2" in report


def test_user_model_filter_mode_and_extending_a_file(tmp_path, capsys):
    out = tmp_path / "tiny.h5"
    code, stdout, _ = run_fit(capsys, "--model", TINY, "--layer", "features.0", "--bases", "4", "--out", str(out))
    assert code == 0 and "features.0" in stdout
    assert read_bases(out).layers["features.0"].mode == "filter"
    code, _, _ = run_fit(capsys, "--model", TINY, "--data", "tests.fixture_models:tiny_batches",
                         "--layer", "features.4", "--bases", "3", "--scheme", "1", "--out", str(out))
    assert code == 0
    layers = read_bases(out).layers
    assert set(layers) == {"features.0", "features.4"} and layers["features.4"].mode == "data"
    assert np.isfinite(layers["features.4"].data_rel_error)


def test_all_layers_skip_1x1_and_asymmetric_runs(tmp_path, capsys):
    out = tmp_path / "tiny.h5"
    code, _, _ = run_fit(capsys, "--model", TINY, "--data", "tests.fixture_models:tiny_batches", "--layer", "all",
                         "--bases", "features.0=3,features.4=4", "--asymmetric", "--out", str(out))
    assert code == 0
    assert set(read_bases(out).layers) == {"features.0", "features.4"}


@pytest.mark.parametrize("args, message", [
    (["--layer", "conv9", "--bases", "4"], "no layer 'conv9'; eligible layers: features.0, features.4"),
    (["--layer", "head", "--bases", "4"], "is a Linear, not an nn.Conv2d"),
    (["--layer", "features.2", "--bases", "4"], "1x1 kernel"),
    (["--layer", "features.0", "--bases", "99"], "K <= min\\(C\\*kh, N\\*kw\\) = 9"),
    (["--layer", "features.0", "--bases", "10", "--scheme", "1"], "M <= kh\\*kw = 9"),
    (["--layer", "features.0", "--bases", "x"], "--bases must be a whole number"),
    (["--layer", "features.0", "--bases", "4", "--lambda-max", "1e-9"], "lambda_max must be >= lambda_min"),
    (["--layer", "features.0", "--bases", "4", "--mode", "data"], "--mode data needs --data"),
])
def test_bad_arguments_get_clear_errors(args, message, tmp_path, capsys):
    code, _, err = run_fit(capsys, "--model", TINY, "--out", str(tmp_path / "x.h5"), *args)
    assert code == 2
    assert re.search(message, err), err


def test_bad_models_and_paths(tmp_path, capsys):
    code, _, err = run_fit(capsys, "--model", "no_such_module:factory", "--layer", "a", "--bases", "2")
    assert code == 2 and "cannot import 'no_such_module'" in err
    code, _, err = run_fit(capsys, "--model", "tests.fixture_models:broken", "--layer", "a", "--bases", "2")
    assert code == 2 and "model factory tests.fixture_models:broken failed: RuntimeError: this factory always fails" in err
    weights = tmp_path / "w.pt"
    torch.save({"wrong": torch.zeros(1)}, weights)
    code, _, err = run_fit(capsys, "--model", TINY, "--weights", str(weights), "--layer", "all", "--bases", "2")
    assert code == 2 and "do not match the model" in err
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "all", "--bases", "2",
                           "--out", str(tmp_path / "missing" / "b.h5"))
    assert code == 2 and "does not exist" in err


def test_file_of_another_model_is_not_mixed(tmp_path, capsys):
    out = tmp_path / "b.h5"
    assert run_fit(capsys, "--model", TINY, "--layer", "features.0", "--bases", "2", "--out", str(out))[0] == 0
    with h5py.File(out, "a") as f:
        f.attrs["model_sha256"] = "0" * 64
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "features.4", "--bases", "2", "--out", str(out))
    assert code == 2 and "another model" in err


def test_interrupt_keeps_saved_layers(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b.h5"
    assert run_fit(capsys, "--model", TINY, "--layer", "features.0", "--bases", "2", "--out", str(out))[0] == 0
    before = out.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("recon.fitting.fit_weights", interrupted)
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "features.4", "--bases", "2", "--out", str(out))
    assert code == 130 and "not damaged" in err
    assert out.read_bytes() == before


def test_evaluate_rejects_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"junk")
    assert evaluate_main(["--bases", str(bad), "--limit", "10"]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err


def test_peer_methods_are_saved_and_loaded_like_schemes(tmp_path, capsys):
    pytest.importorskip("tensorly")
    out = tmp_path / "peers.h5"
    for args in (["--layer", "features.0", "--method", "tucker2", "--bases", "evbmf"],
                 ["--layer", "features.4", "--method", "cp", "--bases", "6"],
                 ["--layer", "head", "--method", "svd", "--bases", "2"]):
        code, stdout, err = run_fit(capsys, "--model", TINY, "--out", str(out), *args)
        assert code == 0, err
    layers = read_bases(out).layers
    assert {name: layer.method for name, layer in layers.items()} == {
        "features.0": "tucker2", "features.4": "cp", "head": "svd"}
    from tests.fixture_models import tiny

    model = tiny()
    expected = copy.deepcopy(model)
    for name, layer in layers.items():
        parent, _, attr = name.rpartition(".")
        setattr(expected.get_submodule(parent) if parent else expected, attr, layer.to_module())
    apply_bases(model, out)
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(model(x), expected(x))
    assert type(model.head).__name__ == "LowRankLinear"


def test_peer_and_budget_errors(tmp_path, capsys):
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "features.0", "--method", "svd", "--bases", "2",
                           "--out", str(tmp_path / "x.h5"))
    assert code == 2 and "is a Conv2d, not an nn.Linear" in err
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "all", "--method", "cp", "--bases", "2",
                           "--out", str(tmp_path / "x.h5"))
    assert code == 2 and "explicitly named --layer" in err
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "all", "--accuracy-budget", "1",
                           "--out", str(tmp_path / "x.h5"))
    assert code == 2 and "bundled model only" in err
    code, _, err = run_fit(capsys, "--layer", "conv2", "--bases", "4", "--samples", "59000",
                           "--out", str(tmp_path / "x.h5"))
    assert code == 2 and "--samples must be <= 55000" in err
