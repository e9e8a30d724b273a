"""ONNX export of low-rank models, checked in onnxruntime against torch."""
import copy

import numpy as np
import pytest
import torch

import recon
from recon import apply_bases, fit
from recon.cli.export import export_onnx, main as export_main
from recon.surgery import replace_layer
from tests.fixture_models import tiny

ort = pytest.importorskip("onnxruntime")


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def test_bundled_model_with_every_method_matches_torch(model, tmp_path):
    low = copy.deepcopy(model)
    replace_layer(low, "conv2", recon.decompose(model.conv2, 16))
    replace_layer(low, "conv3", recon.decompose(model.conv3, 4, "scheme1"))
    replace_layer(low, "conv4", recon.decompose(model.conv4, 20, "tucker2"))
    replace_layer(low, "classifier.1", recon.decompose(model.classifier[1], 32, "svd"))
    path = export_onnx(low, torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx")
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        expected = low(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x.numpy()), expected, atol=1e-4, rtol=1e-4)


def test_cli_exports_a_fitted_user_model(tmp_path, capsys):
    bases = tmp_path / "b.h5"
    assert fit.main(["--model", "tests.fixture_models:tiny", "--layer", "all", "--bases", "3",
                     "--scheme", "1", "--out", str(bases)]) == 0
    out = tmp_path / "tiny.onnx"
    assert export_main(["--model", "tests.fixture_models:tiny", "--bases", str(bases), "--out", str(out),
                        "--input-size", "3x10x10"]) == 0
    low = apply_bases(tiny(), bases)
    x = torch.randn(3, 3, 10, 10)
    with torch.inference_mode():
        np.testing.assert_allclose(run_onnx(out, x.numpy()), low(x).numpy(), atol=1e-4, rtol=1e-4)


def test_cli_reports_bad_input(tmp_path, capsys):
    assert export_main(["--bases", str(tmp_path / "none.h5"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert export_main(["--bases", str(tmp_path / "none.h5"), "--out", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "folder" in capsys.readouterr().err
    bases = tmp_path / "b.h5"
    assert fit.main(["--model", "tests.fixture_models:tiny", "--layer", "features.0", "--bases", "3",
                     "--out", str(bases)]) == 0
    assert export_main(["--model", "tests.fixture_models:tiny", "--bases", str(bases),
                        "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--input-size is needed for a user model" in capsys.readouterr().err
