"""Hostile and careless input gets a clear error naming what is wrong, before work where it can,
and never loses what was already written."""
import os
import re
import signal

import pytest
import torch

import recon
from recon import fit
from recon.cli import common
from recon.cli.export import main as export_main
from recon.errors import BasesFileError
from recon.io.bases_file import check_folder
from tests.fixture_models import endless, tiny

TINY = "tests.fixture_models:tiny"


def run_fit(capsys, *args):
    code = fit.main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("factory, message", [
    ("wrong_channels", "the model failed on the first data sample \\(batch shape \\(4, 5, 10, 10\\)\\): .*"
                       "expected input.* to have 3 channels"),
    ("unbatched", "batch shape \\(3, 10, 10\\).*do the batches have a batch dimension first"),
    ("labels_only", "batch 0 has dtype torch.int64 \\(are these labels"),
    ("uint8_images", "batch 0 has dtype torch.uint8.*floating point inputs, normalised"),
    ("dict_batches", "keys \\['image', 'label'\\] name none of .*forward's parameters \\(x\\): name dict keys"),
    ("no_batches", "the data yielded no batches"),
    ("raising", "reading batch 1 of the data failed: OSError: disk went away"),
    ("nan_images", "batch 1 contains NaN or infinite values"),
])
def test_bad_data_is_named(factory, message, tmp_path, capsys):
    code, err = run_fit(capsys, "--model", TINY, "--data", f"tests.fixture_models:{factory}", "--layer", "all",
                        "--bases", "2", "--out", str(tmp_path / "x.h5"))
    assert code == 2, err
    assert re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "x.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["float64_images", "numpy_images"])
def test_float64_and_numpy_batches_are_converted(factory, tmp_path, capsys):
    code, err = run_fit(capsys, "--model", TINY, "--data", f"tests.fixture_models:{factory}", "--layer", "all",
                        "--bases", "2", "--out", str(tmp_path / "x.h5"))
    assert code == 0, err


@pytest.mark.slow
def test_an_endless_data_source_stops_at_samples(tmp_path, capsys):
    code, err = run_fit(capsys, "--model", TINY, "--data", "tests.fixture_models:endless", "--samples", "10",
                        "--layer", "all", "--bases", "2", "--out", str(tmp_path / "x.h5"))
    assert code == 0, err
    moments = recon.observe(tiny(), endless(), ["features.0"], patches_per_image=1, samples=10, progress=False)
    assert moments["features.0"].count == 10


@pytest.mark.parametrize("content, message", [
    ("text", "is not a torch state dict file"),
    ("list", "holds a list, not a state dict"),
    ("directory", "is a directory"),
])
def test_bad_weights_files_are_named(content, message, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    if content == "text":
        weights.write_text("these are not weights")
    elif content == "list":
        torch.save([torch.zeros(1)], weights)
    else:
        weights.mkdir()
    code, err = run_fit(capsys, "--model", TINY, "--weights", str(weights), "--layer", "all", "--bases", "2")
    assert code == 2 and message in err and "Traceback" not in err


def test_nothing_eligible_is_an_error_not_an_empty_success(tmp_path, capsys):
    code, err = run_fit(capsys, "--model", "tests.fixture_models:only_linear", "--layer", "all", "--bases", "2",
                        "--input-size", "3x2x2", "--out", str(tmp_path / "x.h5"))
    assert code == 2 and "no layer selected for scheme2 (1: it is a Linear layer" in err
    assert not (tmp_path / "x.h5").exists()


def test_an_unwritable_folder_is_refused_before_work(capsys, monkeypatch):
    with pytest.raises(BasesFileError, match="cannot write in /proc"):
        check_folder("/proc/recon-bases.h5")
    monkeypatch.setattr("recon.cli.fit.compress", lambda *a, **k: pytest.fail("fitting started"))
    code, err = run_fit(capsys, "--model", TINY, "--layer", "all", "--bases", "2", "--out", "/proc/recon-bases.h5")
    assert code == 2 and "cannot write in /proc" in err


def test_export_names_its_own_allow_mismatch_option(tmp_path, capsys):
    bases = tmp_path / "b.h5"
    assert fit.main(["--model", TINY, "--layer", "features.0", "--bases", "3", "--out", str(bases)]) == 0
    weights = tmp_path / "w.pt"
    changed = tiny()
    with torch.no_grad():
        changed.features[0].weight.mul_(2)
    torch.save(changed.state_dict(), weights)
    common_args = ["--model", TINY, "--weights", str(weights), "--bases", str(bases), "--input-size", "3x10x10",
                   "--out", str(tmp_path / "m.onnx")]
    assert export_main(common_args) == 2
    assert "--allow-mismatch" in capsys.readouterr().err
    assert export_main([*common_args, "--allow-mismatch"]) == 0


def test_sigterm_unwinds_like_an_interrupt(capsys):
    def killed() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    assert common.run(killed, interrupted="stopped cleanly") == 130
    assert "stopped cleanly" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not common._terminate


def test_a_bug_is_not_reported_as_a_usage_error():
    def broken() -> int:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        common.run(broken)
