"""Hostile input, round 3: bases files that would make recon read outside them, allocate without
bound or load silently changed values; destinations that are not bases files; layers whose
hooks a replacement would drop; data with one sample per batch."""
import argparse
import copy
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import recon
from recon.cli import common, finetune as finetune_cli
from recon.errors import BasesFileError, ConfigError, DataError, LayerError
from recon.io.bases_file import CHECKSUM, read_bases
from tests.fixture_models import tiny, tiny_batches


@pytest.fixture
def saved(tmp_path):
    """A bases file of tiny's three convs, and its path."""
    result = recon.compress(tiny(), tiny_batches, ranks=2, progress=False)
    return result.save(tmp_path / "b.h5")


def _edit(path, edit):
    with h5py.File(path, "r+") as handle:
        edit(handle["layers/features.0"])


@pytest.mark.parametrize("field, change", [("bias", lambda v: v + 1.0), ("bias", lambda v: v * 0 + 3e38),
                                           ("vertical", lambda v: -v)])
def test_a_changed_value_is_refused_by_its_checksum(saved, field, change):
    def edit(group):
        values = group[field][...]
        group[field][...] = change(values)

    _edit(saved, edit)
    with pytest.raises(BasesFileError, match=f"field '{field}' does not match its recorded checksum"):
        recon.apply_bases(tiny(), saved)


def test_a_file_without_checksums_still_loads(saved):
    """Files written before checksums were recorded keep loading (the other checks still run)."""
    with h5py.File(saved, "r+") as handle:
        handle["layers"].visititems(lambda name, node: node.attrs.__delitem__(CHECKSUM)
                                    if isinstance(node, h5py.Dataset) else None)
    model = recon.apply_bases(tiny(), saved)
    assert type(model.features[0]).__name__ == "Scheme2Conv"


def _external(group, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password=hunter2\n")
    del group["history"]
    group.create_group("history").create_dataset("loss", shape=(17,), dtype="u1", external=[(str(secret), 0, 17)])


def _virtual(group, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.create_dataset("data", data=np.ones(8, np.float32))
    layout = h5py.VirtualLayout(shape=(8,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "data", shape=(8,))
    del group["history"]
    group.create_group("history").create_virtual_dataset("loss", layout)


def _soft_link(group, tmp_path):
    group["history/alias"] = h5py.SoftLink("/layers/features.2/vertical")


def _external_link(group, tmp_path):
    group["history/elsewhere"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/data")


@pytest.mark.parametrize("plant, message", [
    (_external, "keeps its values outside the file \\(external storage\\)"),
    (_virtual, "keeps its values outside the file \\(virtual\\)"),
    (_soft_link, "is a SoftLink; bases files hold their own data"),
    (_external_link, "is a ExternalLink; bases files hold their own data"),
])
def test_links_external_and_virtual_storage_are_refused(saved, tmp_path, plant, message):
    _edit(saved, lambda group: plant(group, tmp_path))
    with pytest.raises(BasesFileError, match=message):
        recon.apply_bases(tiny(), saved)
    with pytest.raises(BasesFileError, match=message):  # and never copied into a new file
        finetune_cli.run_finetune(finetune_cli.build_parser().parse_args(
            ["--bases", str(saved), "--out", str(tmp_path / "ft.h5"), "--model", "fmnist-alexnet"]))


def _huge_history(group):
    del group["history"]
    group.create_group("history").create_dataset("loss", shape=(6 << 30,), dtype="u1", chunks=(1 << 20,),
                                                 compression="gzip")


def _huge_factor(group):
    del group["vertical"]
    group.create_dataset("vertical", shape=(1 << 31,), dtype="u1", chunks=(1 << 20,), compression="gzip")


@pytest.mark.parametrize("plant, message", [
    (_huge_history, "history/loss declares 6,442,450,944 values"),
    (_huge_factor, "field 'vertical' has shape \\(2147483648,\\), expected"),
    (lambda group: group.attrs.__setitem__("rank", 10 ** 9), "rank 1000000000 or geometry does not fit"),
    (lambda group: group.attrs.__setitem__("groups", 0), "attribute 'groups' is malformed"),
    (lambda group: group.attrs.__setitem__("groups", 2), "attribute 'groups' \\(2\\) must divide in_channels \\(3\\)"),
])
def test_declared_sizes_are_checked_before_anything_is_read_or_allocated(saved, plant, message):
    _edit(saved, plant)
    assert saved.stat().st_size < 1 << 20  # the file is small; only what it declares is large
    with pytest.raises(BasesFileError, match=message):
        read_bases(saved)


def test_a_checkpoint_at_the_destination_is_not_overwritten_unless_asked(tmp_path):
    result = recon.compress(tiny(), tiny_batches, ranks=2, progress=False)
    checkpoint = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), checkpoint)
    before = checkpoint.read_bytes()
    for merge in (False, True):
        with pytest.raises(BasesFileError, match="exists and is not a recon bases file|not a readable HDF5"):
            result.save(checkpoint, merge=merge)
        assert checkpoint.read_bytes() == before
    result.save(checkpoint, merge=False, overwrite=True)
    assert set(read_bases(checkpoint).layers) == {"features.0", "features.2", "features.4"}


def test_finetune_refuses_a_checkpoint_as_out_before_training(saved, tmp_path, monkeypatch):
    checkpoint = tmp_path / "my_checkpoint.pt"
    checkpoint.write_bytes(b"torch checkpoint bytes")
    monkeypatch.setattr(finetune_cli, "finetune", lambda *args, **kwargs: pytest.fail("trained before refusing"))
    args = finetune_cli.build_parser().parse_args(["--bases", str(saved), "--out", str(checkpoint)])
    with pytest.raises(BasesFileError, match="refusing to overwrite it.*--force"):
        finetune_cli.run_finetune(args)
    assert checkpoint.read_bytes() == b"torch checkpoint bytes"


def test_an_empty_destination_is_a_new_file(tmp_path):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    recon.compress(tiny(), tiny_batches, ranks=2, progress=False).save(empty, merge=True)
    assert len(read_bases(empty).layers) == 3


@pytest.mark.parametrize("attach, message", [
    (lambda conv: conv.register_forward_hook(lambda module, args, output: output * 2), "1 forward hook"),
    (lambda conv: conv.register_forward_pre_hook(lambda module, args: (args[0] * 2,)), "1 forward pre-hook"),
    (lambda conv: setattr(conv, "forward", lambda x: torch.nn.Conv2d.forward(conv, x) * 2),
     "its forward is replaced on the instance"),
])
def test_a_layer_with_hooks_or_a_patched_forward_is_not_replaced(saved, attach, message):
    model = tiny()
    attach(model.features[0])
    result = recon.compress(model, tiny_batches, ranks=2, progress=False)  # "all": skipped, with why
    assert "features.0" not in result.layers and re.search(message, result.skipped["features.0"])
    with pytest.raises(LayerError, match=message):
        recon.compress(model, tiny_batches, layers="features.0", ranks=2, progress=False)
    with pytest.raises(LayerError, match=message):
        recon.apply_bases(model, saved)


@pytest.mark.slow
def test_target_speedup_measures_sensitivities_on_many_samples_even_from_one_sample_batches(monkeypatch):
    seen = []

    def sensitivities(model, probes, sample):
        seen.append(len(sample))
        return {name: 1.0 for name in probes}

    monkeypatch.setattr("recon.pipeline.target_speedup.output_sensitivities", sensitivities)
    singles = [x[i:i + 1] for x in tiny_batches() for i in range(len(x))]  # DataLoader(batch_size=1)
    policy = recon.TargetSpeedup(1.2, cache=False)
    recon.compress(tiny(), singles, ranks=policy, timing=recon.Timing(2, repeats=2), progress=False)
    assert seen == [len(singles)]
    with pytest.raises(ConfigError, match="the data holds one sample"):
        recon.compress(tiny(), [singles[0]], ranks=copy.deepcopy(policy), progress=False)


@pytest.mark.parametrize("options, message", [
    ({"data": 5}, "data must be batches of inputs .* got int"),
    ({"device": "nonsense"}, "device must be a torch device"),
    ({"device": "meta"}, "device 'meta' holds no values"),
    ({"solver": {"ridge": 0.1}}, "solver must be a recon.SolverOptions, got dict: recon.SolverOptions\\(\\*\\*settings\\)"),
    ({"on_layers": 5}, "on_layers must be a function"),
    ({"guard": True, "timing": {"batch": 32}}, "timing must be a recon.Timing, got dict: recon.Timing"),
    ({"mode": "asymmetrical"}, "mode must be one of 'filter', 'data', 'asymmetric' or None, got 'asymmetrical'"),
    ({"config": {"ranks": 2}}, "config must be a recon.CompressConfig, got dict: recon.CompressConfig.from_dict"),
    ({"rank": 2}, "unknown setting\\(s\\) rank; CompressConfig has method, ranks"),
    ({"example_input": torch.zeros(2, 3, 10, 10, dtype=torch.uint8)}, "finite floating-point batch"),
    ({"example_input": torch.full((2, 3, 10, 10), float("nan"))}, "finite floating-point batch"),
    ({"example_input": torch.zeros(3, 10, 10, device="meta")}, "finite floating-point batch"),
    ({"layers": 0}, "layers must be a name, .* got int"),
])
def test_compress_arguments_are_checked_before_any_work(options, message):
    arguments = {"data": tiny_batches, "ranks": 2, "progress": False, **options}
    data = arguments.pop("data")
    with pytest.raises((ConfigError, recon.errors.DataError), match=message):
        recon.compress(tiny(), data, **arguments)


@pytest.mark.parametrize("settings, message", [
    ({"seed": "a"}, "seed must be a whole number"), ({"seed": -1}, "seed must be a whole number"),
    ({"seed": 2 ** 32}, r"seed must be a whole number in 0..2\*\*32-1"),
    ({"lbfgs_iterations": 2.5}, "lbfgs_iterations must be a whole number"), ({"ridge": "big"}, "ridge must be"),
])
def test_solver_options_are_checked_when_made(settings, message):
    with pytest.raises(ConfigError, match=message):
        recon.SolverOptions(**settings)


def test_numpy_ranks_are_plain_ints_in_the_bases_file(tmp_path):
    for ranks in (np.int64(2), {"features.0": np.int64(2), "features.2": np.int32(3), "features.4": 2}):
        result = recon.compress(tiny(), tiny_batches, ranks=ranks, progress=False)
        assert read_bases(result.save(tmp_path / "np.h5", merge=False)).layers["features.0"].rank == 2


@pytest.mark.parametrize("options, message", [
    ({"margin": float("nan")}, "margin must be a finite number"),
    ({"cache": Path(__file__).parent}, "the path of a JSON file, got the folder"), ({"cache": 5}, "got 5"),
])
def test_target_speedup_arguments_are_checked_when_made(options, message):
    with pytest.raises(ConfigError, match=message):
        recon.TargetSpeedup(2, **options)


@pytest.mark.parametrize("options, message", [
    ({"repeats": 2.5}, "Timing.repeats must be a whole number"), ({"batch": 0}, "Timing.batch must be a whole number"),
    ({"batch": 10 ** 9}, "Timing.batch must be at most 4096"), ({"backend": "tvm"}, "unknown latency backend 'tvm'"),
    ({"channels_last": "yes"}, "Timing.channels_last must be True or False"),
])
def test_timing_settings_are_checked_when_made(options, message):
    with pytest.raises(ConfigError, match=message):
        recon.Timing(**options)


def test_an_example_input_the_model_cannot_take_is_named_before_any_timing():
    policy = recon.TargetSpeedup(2, cache=False)
    with pytest.raises(DataError, match="the model failed on example_input \\(batch shape \\(2, 5, 10, 10\\)\\)"):
        recon.compress(tiny(), tiny_batches, ranks=policy, example_input=torch.zeros(2, 5, 10, 10), progress=False)


@pytest.mark.parametrize("text, message", [("meta", "holds no values"), ("nonsense", "must be a torch device")])
def test_the_clis_check_devices_as_compress_does(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        common.device(text)
