import shutil

import numpy as np
import pytest
import torch

from pyro_vae.data import (
    DATASETS,
    IDX_FILES,
    MD5,
    DataError,
    Dataset,
    fetch,
    load_dataset,
    md5sum,
    read_idx,
)


def test_real_mnist_through_the_fetch_chain(mnist_binary):
    folder = fetch("mnist")
    assert all(md5sum(folder / f) == MD5["mnist"][f] for f in IDX_FILES)
    d = mnist_binary
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.x_train.dtype == torch.float32
    assert d.x_train.min() == 0 and d.x_train.max() == 1
    assert ((d.x_train > 0) & (d.x_train < 1)).any()  # grey levels kept; binarized per batch
    assert d.image_shape == (1, 28, 28) and d.binarize
    assert d.y_train[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's first training labels
    assert not load_dataset("mnist").binarize


def test_dynamic_binarization_is_a_fresh_draw_per_batch(mnist_binary):
    d = mnist_binary.subset(train=1000)
    g = torch.Generator().manual_seed(0)
    first = next(d.batches("train", 1000, g, shuffle=False))
    second = next(d.batches("train", 1000, g, shuffle=False))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # same images, new draw
    # each pixel is a Bernoulli draw of its grey level
    assert (first.mean() - d.x_train.mean()).abs() < 0.01
    # evaluation uses one fixed draw
    assert torch.equal(next(d.eval_batches("train", 1000)), next(d.eval_batches("train", 1000)))


def test_batches_cover_a_permutation():
    x = torch.arange(10.0)[:, None] / 10
    d = Dataset("toy", x_train=x, x_test=x)
    g = torch.Generator().manual_seed(1)
    batches = list(d.batches("train", 4, g))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    seen = torch.cat(batches).flatten()
    assert sorted(seen.tolist()) == sorted(x.flatten().tolist())
    assert not torch.equal(seen, x.flatten())  # shuffled
    with pytest.raises(DataError, match="'valid'.*train, test"):
        list(d.batches("valid", 4))


@pytest.fixture
def cache_copy(tmp_path, mnist_binary):
    """A private cache folder holding a copy of the verified MNIST files."""
    folder = tmp_path / "mnist"
    shutil.copytree(fetch("mnist"), folder)
    return tmp_path


def test_truncated_cache_file_is_reported_never_loaded(cache_copy):
    path = cache_copy / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", root=cache_copy, download=False)
    message = str(e.value)
    assert "t10k-images-idx3-ubyte is corrupt or truncated" in message
    assert MD5["mnist"]["t10k-images-idx3-ubyte"] in message
    assert str(cache_copy / "mnist") in message  # says where to put the files by hand


def test_flipped_byte_is_caught_by_md5(cache_copy):
    path = cache_copy / "mnist" / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # still a well-formed IDX file: only the checksum can tell
    path.write_bytes(bytes(data))
    read_idx(path)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is corrupt"):
        load_dataset("mnist-binary", root=cache_copy, download=False)


def test_missing_files_name_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte missing"):
        fetch("fashion-mnist", root=tmp_path, download=False)


def test_read_idx_detects_truncation(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") * 2
    path.write_bytes(header + bytes(18))
    assert read_idx(path).shape == (2, 3, 3)
    path.write_bytes(header + bytes(17))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(path)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DataError) as e:
        load_dataset("cifar10")
    assert "'cifar10'" in str(e.value)
    assert all(name in str(e.value) for name in DATASETS) and ".npz" in str(e.value)


# ------------------------------------------------------------------ a user's .npz file


def test_npz_uint8_images_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 7, 5), dtype=np.uint8)
    y = rng.integers(0, 10, size=50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(str(tmp_path / "d.npz"))
    assert d.image_shape == (1, 7, 5) and d.x_dim == 35
    assert d.x_train.shape == (45, 35) and d.x_test.shape == (5, 35)  # 10% held out
    assert d.y_train.shape == (45,)
    all_x = torch.cat([d.x_train, d.x_test]) * 255
    assert sorted(all_x.round().sum(1).tolist()) == sorted(x.reshape(50, -1).sum(1).tolist())


def test_npz_with_its_own_test_split(tmp_path):
    x = np.random.default_rng(0).random((20, 4))
    np.savez(tmp_path / "d.npz", x=x, x_test=x[:3])
    d = load_dataset(str(tmp_path / "d.npz"))
    assert d.x_train.shape == (20, 4) and d.x_test.shape == (3, 4)
    assert d.image_shape is None


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(images=np.zeros((5, 4))), "no array 'x' \\(it has: images\\)"),
        (dict(x=np.zeros(5)), "shape \\(5,\\); expected \\(N, D\\)"),
        (dict(x=np.zeros((5, 4), dtype=np.int64)), "dtype int64; use uint8"),
        (dict(x=np.full((5, 4, 4), 2.0)),
         "values in \\[2, 2\\]; float images must lie in \\[0, 1\\]"),
        (dict(x=np.full((5, 4), np.nan)), "NaN"),
        (dict(x=np.zeros((5, 4)), y=np.zeros(4, dtype=int)), "y has shape \\(4,\\)"),
        (dict(x=np.zeros((5, 4)), x_test=np.zeros((2, 3))), "x_test has shape"),
    ],
)
def test_npz_validation_names_what_is_wrong(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


def test_corrupt_or_missing_npz_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((100, 4)))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot be read as a .npz file"):
        load_dataset(str(tmp_path / "d.npz"))
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npz"))
