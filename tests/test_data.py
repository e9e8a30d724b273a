import gzip
import shutil

import pytest

from recon import data


@pytest.mark.dataset
def test_real_files_have_expected_counts_and_labels():
    for split, count in (("train", 60_000), ("test", 10_000)):
        images, labels = data.load_split(split)
        assert images.shape == (count, 28, 28)
        assert labels.shape == (count,)
        assert int(labels.min()) == 0 and int(labels.max()) == 9
        # every class is present in roughly equal numbers
        assert labels.bincount().min() == count // 10


@pytest.mark.dataset
def test_normalisation_uses_training_statistics():
    images = data.dataset("train").tensors[0]
    assert abs(float(images.mean())) < 0.01
    assert abs(float(images.std()) - 1.0) < 0.01


def _copy_dataset(tmp_path):
    for path in data.DEFAULT_DATA_DIR.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_truncated_copy_is_rejected_with_clear_message(tmp_path, monkeypatch):
    folder = _copy_dataset(tmp_path)
    target = folder / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    monkeypatch.setenv("RECON_DATA_DIR", str(folder))
    with pytest.raises(data.DataError, match="truncated.*dataset-fashion-mnist"):
        data.load_split("test")


def test_wrong_magic_is_rejected(tmp_path, monkeypatch):
    folder = _copy_dataset(tmp_path)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[3] = 0x03
    target.write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setenv("RECON_DATA_DIR", str(folder))
    with pytest.raises(data.DataError, match="magic number"):
        data.load_split("test")


def test_missing_file_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_split("train")


def test_unknown_split():
    with pytest.raises(ValueError, match="allowed"):
        data.load_split("validation")


@pytest.mark.dataset
def test_validation_split_is_the_tail_of_train_and_disjoint_from_fitting_images():
    validation = data.dataset("validation")
    train_images = data.dataset("train").tensors[0]
    assert len(validation) == data.VALIDATION_SIZE
    assert data.fit_split_size() + data.VALIDATION_SIZE == 60_000
    assert (validation.tensors[0][0] == train_images[data.fit_split_size()]).all()
    assert (data.dataset("train", limit=3, offset=10).tensors[0] == train_images[10:13]).all()
