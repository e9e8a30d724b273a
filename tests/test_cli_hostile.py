"""Hostile arguments to the commands: each is refused in one line (exit status 2) before any
slow work, saying what was wrong and what is allowed. The factories below are ``--model`` and
``--data`` specs (``tests.test_cli_hostile:no_parameters``)."""
import re

import pytest
import torch
from torch import nn

from recon import fit
from recon.cli.evaluate import main as evaluate_main
from recon.cli.export import main as export_main
from recon.cli.finetune import main as finetune_main

TINY = "tests.fixture_models:tiny"
BATCHES = "tests.fixture_models:tiny_batches"
HERE = "tests.test_cli_hostile"


def no_parameters() -> nn.Module:
    return nn.Sequential(nn.ReLU())


def forty_two() -> int:
    return 42


def one_tensor() -> torch.Tensor:
    return torch.randn(4, 3, 10, 10)


GENERATOR_CALLS = []


def generator_batches():
    GENERATOR_CALLS.append(1)
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(4, 3, 10, 10, generator=generator) for _ in range(3))


@pytest.fixture(scope="module")
def tiny_bases(tmp_path_factory):
    """A bases file of the tiny model (filter mode, one layer)."""
    out = tmp_path_factory.mktemp("bases") / "tiny.h5"
    assert fit.main(["--model", TINY, "--layer", "features.0", "--bases", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Fitting, exporting, evaluating and training fail the test: refusals come before them."""
    for target in ("recon.cli.fit.compress", "recon.cli.export.export_onnx", "recon.cli.export.apply_bases",
                   "recon.cli.evaluate.accuracy", "recon.cli.evaluate.latencies_by_format",
                   "recon.cli.finetune.finetune", "recon.cli.sources.fashion_mnist"):
        monkeypatch.setattr(target, lambda *a, _target=target, **k: pytest.fail(f"{_target} was called"))


def refused(capsys, main, argv: list[str]) -> str:
    """The one-line error of ``main(argv)``, which must exit with status 2 (returned or argparse's)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def parse_error(capsys, main, argv: list[str]) -> str:
    """The message of an argparse refusal of ``argv`` (exit status 2, before the command starts)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    return err


@pytest.mark.parametrize("ranks", [["--bases", "2"], ["--target-speedup", "2", "--input-size", "3x8x8"]],
                         ids=["bases", "target-speedup"])
def test_fit_names_a_model_without_parameters(ranks, tmp_path, capsys, no_work):
    err = refused(capsys, fit.main, ["--model", f"{HERE}:no_parameters", "--layer", "all", *ranks,
                                     "--out", str(tmp_path / "x.h5")])
    assert f"the model from {HERE}:no_parameters has no parameters: it has no Conv2d or Linear layer" in err
    assert not (tmp_path / "x.h5").exists()


def test_export_names_a_model_without_parameters(tiny_bases, tmp_path, capsys, no_work):
    err = refused(capsys, export_main, ["--model", f"{HERE}:no_parameters", "--bases", str(tiny_bases),
                                        "--input-size", "3x8x8", "--out", str(tmp_path / "m.onnx")])
    assert f"the model from {HERE}:no_parameters has no parameters" in err


@pytest.mark.parametrize("factory, what", [
    ("forty_two", "returned a value of type int \\(42\\), not an iterable of input batches: return a list"),
    ("one_tensor", "returned one Tensor of shape \\(4, 3, 10, 10\\), not an iterable of input batches"),
], ids=["int", "tensor"])
def test_a_data_factory_that_returns_no_batches_is_named(factory, what, tmp_path, capsys, no_work):
    err = refused(capsys, fit.main, ["--model", TINY, "--data", f"{HERE}:{factory}", "--layer", "all",
                                     "--bases", "2", "--out", str(tmp_path / "x.h5")])
    assert re.search(f"--data {HERE}:{factory} {what}", err), err


def test_a_generator_data_factory_is_called_for_every_pass(tmp_path, capsys):
    GENERATOR_CALLS.clear()
    code = fit.main(["--model", TINY, "--data", f"{HERE}:generator_batches", "--mode", "filter",
                     "--layer", "features.0", "--bases", "2", "--out", str(tmp_path / "x.h5")])
    assert code == 0, capsys.readouterr().err
    assert len(GENERATOR_CALLS) >= 2  # checked once, then called again to read a fresh generator


def test_export_refuses_an_input_size_the_first_conv_does_not_take(tiny_bases, tmp_path, capsys, no_work):
    err = refused(capsys, export_main, ["--model", TINY, "--bases", str(tiny_bases), "--input-size", "1x8x8",
                                        "--out", str(tmp_path / "m.onnx")])
    assert "--input-size 1x8x8 has 1 channel(s), but the model's first Conv2d (features.0) takes 3" in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("main, argv, option", [
    (fit.main, ["--model", TINY, "--layer", "all", "--bases", "2", "--guard", "--input-size", "3x8x8",
                "--guard-batch", "1000000000"], "--guard-batch"),
    (evaluate_main, ["--dense", "--batch-size", "1000000000"], "--batch-size"),
], ids=["fit", "evaluate"])
def test_huge_timing_batches_are_refused_before_allocation(main, argv, option, capsys, no_work):
    assert f"argument {option}: must be in 1..4096, got 1000000000" in parse_error(capsys, main, argv)


@pytest.mark.parametrize("samples, message", [
    (["--model", TINY, "--data", BATCHES, "--calibrate-samples", "1"], "argument --calibrate-samples: must be >= 2"),
    (["--mode", "filter", "--calibrate-samples", "60000"], "--calibrate-samples must be <= 55000"),
], ids=["too-few", "beyond-the-bundled-split"])
def test_calibration_samples_are_checked_before_fitting(samples, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("recon.cli.fit.compress", lambda *a, **k: pytest.fail("fitting started"))
    err = refused(capsys, fit.main, ["--layer", "all", "--bases", "2", "--calibrate", *samples,
                                     "--out", str(tmp_path / "x.h5")])
    assert message in err
    assert not (tmp_path / "x.h5").exists()


def test_latency_backend_without_target_speedup_is_refused(tmp_path, capsys, no_work):
    err = refused(capsys, fit.main, ["--model", TINY, "--layer", "all", "--bases", "2",
                                     "--latency-backend", "onnxruntime", "--out", str(tmp_path / "x.h5")])
    assert "--latency-backend only applies with --target-speedup" in err


@pytest.mark.parametrize("main, argv", [
    (fit.main, ["--model", TINY, "--layer", "all", "--bases", "2"]),
    (evaluate_main, ["--dense"]),
    (finetune_main, ["--bases", "missing.h5"]),
], ids=["fit", "evaluate", "finetune"])
@pytest.mark.parametrize("device, message", [
    ("meta", "device 'meta' holds no values"),
    ("ipu", "device 'ipu' cannot be used here \\(\\w+: .*\\); use cpu"),
])
def test_unusable_devices_are_refused_at_parsing(main, argv, device, message, capsys, no_work):
    err = parse_error(capsys, main, [*argv, "--device", device])
    assert re.search(f"argument --device: {message}", err), err


@pytest.mark.parametrize("main, argv", [
    (fit.main, ["--model", TINY, "--layer", "all", "--bases", "2", "--method", "cp"]),
    (finetune_main, ["--bases", "missing.h5"]),
], ids=["fit", "finetune"])
@pytest.mark.parametrize("seed", ["-1", str(2 ** 70), str(2 ** 32)])
def test_seeds_outside_0_to_2_32_are_refused_at_parsing(main, argv, seed, capsys, no_work):
    err = parse_error(capsys, main, [*argv, "--seed", seed])
    assert f"argument --seed: must be in 0..4294967295, got {seed}" in err
