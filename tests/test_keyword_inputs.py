"""Models fed keyword or several inputs: dict batches end to end (statistics, the rank policy,
the guard, asymmetric fitting, calibration, block reconstruction, saving and applying)."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import recon
from recon.inputs import Inputs, cat, run, size, take


class PixelValues(nn.Module):
    """A vision model called as Hugging Face's are: ``model(pixel_values=x)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, pixel_values, output_hidden_states=False):
        features = self.body(self.stem(pixel_values)).mean((2, 3))
        return {"logits": self.head(features)}


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.left, self.right = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(2, 12, 3, padding=1)
        self.mix = nn.Conv2d(12, 12, 3, padding=1)

    def forward(self, image, depth):
        return self.mix(torch.relu(self.left(image) + self.right(depth)))


class Images(Dataset):
    """Samples as a Hugging Face dataset gives them: dicts with the inputs and a label."""

    def __init__(self, count=160):
        generator = torch.Generator().manual_seed(2)
        self.images = torch.randn(count, 3, 12, 12, generator=generator)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"pixel_values": self.images[index], "labels": index % 5}


def _outputs(model, batches):
    return torch.cat([run(model, batch)["logits"] if isinstance(model, PixelValues) else run(model, batch)
                      for batch in batches])


@pytest.mark.slow
def test_a_dataloader_of_dicts_compresses_a_pixel_values_model_end_to_end(tmp_path):
    loader = DataLoader(Images(), batch_size=32)
    batches = [Inputs(kwargs={"pixel_values": b["pixel_values"]}) for b in loader]
    result = recon.compress(PixelValues(), loader, ranks=recon.TargetSpeedup(1.01, cache=False, max_layer_loss=None,
                                                                             max_output_change=None),
                            timing=recon.Timing(8, repeats=2), progress=False)
    assert "batch 8" in result.outcome.description  # tables and timings ran on the dicts' pixel_values
    assert set(result.layers) | set(result.dense_layers) == {"stem", "body.1"}  # scheme2 replaces convs
    dense = _outputs(PixelValues(), batches)
    full = recon.compress(PixelValues(), loader, ranks={"stem": 9, "body.1": 48}, mode="asymmetric", guard=True,
                          min_speedup=1e-3, progress=False)
    assert all(record.guard is not None and record.input_shape == ((3, 12, 12) if record.name == "stem" else
                                                                    (16, 12, 12)) for record in full.kept)
    torch.testing.assert_close(_outputs(full.model, batches), dense, atol=1e-3, rtol=1e-3)  # full rank: exact
    report = full.calibrate(loader, samples=64, epochs=1, progress=False)
    assert report.after[0] <= report.before[0]
    full.reconstruct_blocks(loader, samples=160, blocks=["body"], epochs=1, progress=False)
    path = full.save(tmp_path / "pixel.h5")
    applied = recon.apply_bases(PixelValues(), path, example_input={"pixel_values": batches[0].kwargs["pixel_values"]})
    torch.testing.assert_close(_outputs(applied, batches), _outputs(full.model, batches))


@pytest.mark.slow
def test_a_model_of_two_inputs_takes_dict_batches_named_after_its_parameters():
    generator = torch.Generator().manual_seed(3)
    data = [{"image": torch.randn(16, 3, 8, 8, generator=generator), "depth": torch.randn(16, 2, 8, 8, generator=generator),
             "id": list(range(16))} for _ in range(3)]
    model = TwoInputs()
    statistics = recon.observe(model, data, ["left", "right"], patches_per_image=None, progress=False)
    expected = cat([Inputs(kwargs={"depth": batch["depth"]}) for batch in data]).kwargs["depth"]
    patches = torch.nn.functional.unfold(expected, 3, padding=1).transpose(1, 2).reshape(-1, 18).double()
    torch.testing.assert_close(torch.as_tensor(statistics["right"].mean), patches.mean(0), rtol=1e-6, atol=1e-8)
    result = recon.compress(model, data, ranks={"left": 9, "right": 6, "mix": 36}, patches_per_image=None,
                            progress=False)
    inputs = Inputs(kwargs={"image": data[0]["image"], "depth": data[0]["depth"]})
    torch.testing.assert_close(run(result.model, inputs), run(model, inputs), atol=1e-3, rtol=1e-3)


def test_batch_helpers_treat_tensors_and_inputs_alike():
    x, y = torch.arange(12.).reshape(6, 2), torch.arange(6)
    batch = Inputs((x,), {"y": y})
    assert size(batch) == 6 and size(x) == 6
    assert torch.equal(take(batch, 2, 5).args[0], x[2:5]) and torch.equal(take(batch, 2).kwargs["y"], y[:2])
    assert torch.equal(cat([take(batch, 3), take(batch, 3, 6)]).kwargs["y"], y)


@pytest.mark.parametrize("batch, message", [
    ({"pixel_values": torch.zeros(4, 3, 8, 8, dtype=torch.uint8)}, "holds no floating point tensor"),
    ({"pixel_values": torch.zeros(4, 3, 8, 8), "mask": torch.ones(3)}, "same batch dimension first"),
    ({"pixel_values": torch.full((4, 3, 8, 8), float("nan"))}, "contains NaN or infinite values"),
])
def test_bad_dict_batches_are_named(batch, message):
    with pytest.raises(recon.DataError, match=f"batch 0 .*{message}|batch 0: .*{message}"):
        recon.compress(PixelValues(), [batch], ranks=2, progress=False)
