"""recon.fit and recon.evaluate end to end, and their answers to bad arguments."""
import copy
import re

import h5py
import numpy as np
import pytest
import torch

from recon import apply_bases, data, fit, zoo
from recon.cli.evaluate import main as evaluate_main
from recon.io.bases_file import read_bases
from recon.metrics import accuracy

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
    assert "conv2" in stdout and "output var. lost" in stdout
    layer = read_bases(out).layers["conv2"]
    assert layer.mode == "data" and layer.method == "scheme2" and layer.rank == 24
    assert 0 <= layer.output_variance_lost < layer.filter_energy_lost
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


def test_filter_mode_on_the_bundled_model_reads_no_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("recon.data.load_split", lambda split: pytest.fail("Fashion-MNIST was read"))
    code, stdout, err = run_fit(capsys, "--layer", "conv3", "--bases", "16", "--mode", "filter",
                                "--out", str(tmp_path / "f.h5"))
    assert code == 0, err
    assert read_bases(tmp_path / "f.h5").layers["conv3"].input_shape == (128, 7, 7)


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
    assert np.isfinite(layers["features.4"].output_variance_lost)
    assert evaluate_main(["--bases", str(out), "--table"]) == 0  # any file's table, no bundled model needed
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["layer", "method", "rank"]
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert rows["features.0"][1:4] == ["scheme2", "4", "filter"] and rows["features.4"][1:4] == ["scheme1", "3", "data"]


@pytest.mark.slow
def test_all_layers_with_a_1x1_conv_and_asymmetric_runs(tmp_path, capsys):
    out = tmp_path / "tiny.h5"
    code, stdout, _ = run_fit(capsys, "--model", TINY, "--data", "tests.fixture_models:tiny_batches", "--layer", "all",
                              "--bases", "features.0=3,features.2=4,features.4=4", "--asymmetric", "--out", str(out))
    assert code == 0
    assert set(read_bases(out).layers) == {"features.0", "features.2", "features.4"}
    code, stdout, _ = run_fit(capsys, "--model", TINY, "--layer", "all", "--bases", "2", "--scheme", "1",
                              "--out", str(tmp_path / "s1.h5"))
    assert code == 0 and "features.2 (it has a 1x1 kernel" in stdout


def test_layers_by_regular_expression(tmp_path, capsys):
    out = tmp_path / "tiny.h5"
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "features\\.[04]", "--bases", "2", "--out", str(out))
    assert code == 0, err
    assert set(read_bases(out).layers) == {"features.0", "features.4"}


@pytest.mark.parametrize("args, message", [
    (["--layer", "conv9", "--bases", "4"], "no layer 'conv9'; layers scheme2 can replace: features.0, features.2, "
                                          "features.4"),
    (["--layer", "head", "--bases", "4"], "'head' cannot be replaced by scheme2: it is a Linear layer"),
    (["--layer", "features.2", "--bases", "4", "--scheme", "1"], "1x1 kernel"),
    (["--layer", "features.0", "--bases", "99"], "rank in 1..9 .*min\\(C\\*kh, N\\*kw\\)"),
    (["--layer", "features.0", "--bases", "10", "--scheme", "1"], "rank in 1..9 .*M <= kh\\*kw"),
    (["--layer", "features.0", "--bases", "x=y=z"], "--bases must be a whole number"),
    (["--layer", "features.0", "--bases", "4", "--lambda-max", "1e-9"], "lambda_max must be >= lambda_min"),
    (["--layer", "features.0", "--bases", "4", "--mode", "data"], "--mode data needs --data"),
    (["--layer", "all", "--bases", "features.0=8,nosuch=4"], "ranks name layer\\(s\\) that are not selected: nosuch"),
    (["--layer", "all", "--bases", "features.0=2,features.0=3"], "--bases names layer 'features.0' twice"),
    (["--layer", "features.0", "--bases", "2", "--method", "cp", "--mode", "data"], "method cp reconstructs weights only"),
    (["--layer", "all", "--bases", "2", "--method", "auto"], "--method auto chooses a method per layer .* needs "
     "--target-speedup"),
    (["--layer", "features.0", "--bases", "2", "--method", "cp", "--data", "tests.fixture_models:tiny_batches",
      "--mode", "data"], "method cp reconstructs weights only"),
    (["--layer", "features.0", "--bases", "2", "--method", "cp", "--asymmetric"], "method cp reconstructs weights only"),
    (["--layer", "head", "--bases", "2", "--method", "cp"], "'head' cannot be replaced by cp"),
    (["--layer", "all", "--bases", "2", "--eval"], "--eval and --accuracy-budget measure Fashion-MNIST accuracy"),
    (["--layer", "all", "--accuracy-budget", "1"], "bundled models only"),
    (["--layer", "all", "--target-speedup", "2"], "give --data or --input-size"),
])
def test_bad_arguments_get_clear_errors(args, message, tmp_path, capsys):
    code, _, err = run_fit(capsys, "--model", TINY, "--out", str(tmp_path / "x.h5"), *args)
    assert code == 2
    assert re.search(message, err), err
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("args, message", [
    (["--samples", "-1"], "--samples: must be >= 1, got -1"),
    (["--lbfgs-iterations", "0"], "--lbfgs-iterations: must be >= 1"),
    (["--patches-per-image", "-3"], "--patches-per-image: must be >= 0"),
    (["--target-speedup", "-2"], "--target-speedup: must be a finite number > 0"),
    (["--bases", "2", "--target-speedup", "2"], "not allowed with argument"),
])
def test_bad_numbers_stop_at_parsing(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        fit.main(["--model", TINY, "--layer", "all", *(["--bases", "2"] if "--bases" not in args and
                                                       "--target-speedup" not in args else []), *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_target_below_one_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("recon.pipeline.compress.gather", lambda *a, **k: pytest.fail("statistics were gathered"))
    code, _, err = run_fit(capsys, "--model", TINY, "--data", "tests.fixture_models:tiny_batches", "--layer", "all",
                           "--target-speedup", "0.5", "--out", str(tmp_path / "x.h5"))
    assert code == 2 and "target speedup must be a number > 1, got 0.5" in err


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
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "all", "--bases", "2", "--out", str(tmp_path))
    assert code == 2 and "it is a directory" in err


def test_file_of_another_model_is_refused_before_fitting(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b.h5"
    assert run_fit(capsys, "--model", TINY, "--layer", "features.0", "--bases", "2", "--out", str(out))[0] == 0
    with h5py.File(out, "a") as f:
        f.attrs["model_sha256"] = "0" * 64
    monkeypatch.setattr("recon.cli.fit.compress", lambda *a, **k: pytest.fail("fitting started"))
    code, _, err = run_fit(capsys, "--model", TINY, "--layer", "features.4", "--bases", "2", "--out", str(out))
    assert code == 2 and "another model" in err


def test_interrupt_keeps_saved_layers(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b.h5"
    assert run_fit(capsys, "--model", TINY, "--layer", "features.0", "--bases", "2", "--out", str(out))[0] == 0
    before = out.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("recon.pipeline.compress.fit_layers", interrupted)
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
        setattr(expected.get_submodule(parent) if parent else expected, attr, layer.module)
    apply_bases(model, out)
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(model(x), expected(x))
    assert type(model.head).__name__ == "LowRankLinear"


def test_samples_bound_the_bundled_training_split(tmp_path, capsys):
    code, _, err = run_fit(capsys, "--layer", "conv2", "--bases", "4", "--samples", "59000",
                           "--out", str(tmp_path / "x.h5"))
    assert code == 2 and "--samples must be <= 55000" in err
