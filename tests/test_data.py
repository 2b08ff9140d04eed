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


# ------------------------------------------------------------------ your own files


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _colour_folder(root, per_class=12, size=(6, 8)):
    """Two classes of colour images, some in a nested folder; pixel (0, 0) tells the class
    and the image's index."""
    for c, name in enumerate(["blue", "red"]):  # sorted, as the labels are
        for i in range(per_class):
            a = np.zeros((*size, 3), np.uint8)
            a[0, 0] = (c * 100 + i, 7, 200)
            _png(root / name / ("deeper" if i % 3 == 0 else "") / f"{i:02d}.png", a)
    return root


def test_folder_of_colour_pngs_with_nested_classes(tmp_path):
    d = load_dataset(str(_colour_folder(tmp_path / "imgs")))
    assert d.image_shape == (3, 6, 8) and d.x_dim == 3 * 6 * 8
    # every 10th image of each class (file-name order: deeper/ sorts before the files)
    assert d.x_train.shape[0] == 22 and d.x_test.shape[0] == 2
    assert sorted(d.y_train.tolist()) == [0] * 11 + [1] * 11 and sorted(d.y_test.tolist()) == [0, 1]
    # channel-major rows: the red channel of pixel (0, 0) is the first number, blue is 2*48
    codes = (torch.cat([d.x_train, d.x_test])[:, 0] * 255).round().long()
    labels = torch.cat([d.y_train, d.y_test])
    assert ((codes // 100) == labels).all() and len(set(codes.tolist())) == 24
    assert (torch.cat([d.x_train, d.x_test])[:, 2 * 48] * 255).round().eq(200).all()


def test_folder_of_grey_images_without_classes_and_resizing(tmp_path):
    for i in range(12):
        size = (10, 10) if i % 2 else (20, 12)  # two sizes: refused unless resized
        suffix = ".jpg" if i % 3 == 0 else ".png"  # JPEG and PNG alike
        _png(tmp_path / "g" / f"{i:02d}{suffix}", np.full(size, 10 * i, np.uint8))
    with pytest.raises(DataError, match="images differ in size.*--image-size"):
        load_dataset(str(tmp_path / "g"))
    d = load_dataset(str(tmp_path / "g"), image_size=(8, 5))
    assert d.image_shape == (1, 8, 5) and d.y_train is None and d.x_test.shape[0] == 1
    assert (d.x_train[1] * 255).round().eq(10).all()  # a constant image stays constant


def test_bad_image_folders_name_the_file_and_the_problem(tmp_path):
    root = _colour_folder(tmp_path / "corrupt")
    bad = root / "red" / "05.png"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG
    with pytest.raises(DataError, match=f"{bad}: cannot be read as an image"):
        load_dataset(str(root))
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty: no images in it"):
        load_dataset(str(tmp_path / "empty"))
    deep = tmp_path / "deep"
    _png(deep / "a.png", np.full((4, 4), 40000, np.uint16))  # 16 bits: not silently clipped
    _png(deep / "b.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="a.png: its pixels are of mode 'I;16'"):
        load_dataset(str(deep))
    mixed = _colour_folder(tmp_path / "mixed")
    _png(mixed / "blue" / "zz.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(DataError, match="mix grey and colour: .*zz.png is grey.*is colour"):
        load_dataset(str(mixed))


def test_csv_of_vectors_with_a_header_and_a_label_column(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 10)) * 5  # any real numbers: vectors, not pixels
    lines = ["label," + ",".join(f"f{i}" for i in range(10))]
    lines += [f"{i % 3}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(x)]
    (tmp_path / "v.csv").write_text("\n".join(lines) + "\n")
    d = load_dataset(str(tmp_path / "v.csv"))
    assert d.x_dim == 10 and d.image_shape is None
    assert d.x_train.shape == (36, 10) and d.x_test.shape == (4, 10)
    got = torch.cat([d.x_train, d.x_test]).double()
    assert sorted(got.sum(1).round(decimals=3).tolist()) == pytest.approx(
        sorted(np.round(x.sum(1), 3).tolist()), abs=1e-3)
    assert set(torch.cat([d.y_train, d.y_test]).tolist()) == {0, 1, 2}
    (tmp_path / "plain.csv").write_text("1,2\n3,4\n5,6\n")  # no header, no labels
    plain = load_dataset(str(tmp_path / "plain.csv"))
    assert plain.y_train is None and plain.x_dim == 2


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n3,oops\n", "line 3, column 2: 'oops' is not a number"),
    ("1,2\n3\n", "line 2: 1 cells, expected 2"),
    ("1,2\n3,nan\n", "line 2, column 2: nan is not a finite number"),
    ("a,b\n1,2\n", "1 data rows"),
])
def test_bad_csv_names_the_line_column_and_problem(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=f"bad.csv, {message}" if "line" in message else message):
        load_dataset(str(tmp_path / "bad.csv"))


def test_labels_come_with_batches_and_are_refused_by_name_where_there_are_none():
    d = Dataset("toy", torch.rand(10, 3), torch.rand(4, 3), torch.arange(10), torch.arange(4))
    g = torch.Generator().manual_seed(1)
    pairs = list(d.batches("train", 4, g, labels=True))
    x = torch.cat([p[0] for p in pairs])
    y = torch.cat([p[1] for p in pairs])
    # each label travels with its own row, in the shuffled order
    assert all(torch.equal(x[i], d.x_train[y[i]]) for i in range(10))
    g = torch.Generator().manual_seed(1)  # and the x stream is the one without labels
    assert torch.equal(torch.cat(list(d.batches("train", 4, g))), x)
    unlabelled = Dataset("vectors.csv", torch.rand(10, 3), torch.rand(4, 3))
    with pytest.raises(DataError, match="dataset 'vectors.csv' has no labels"):
        next(unlabelled.batches("train", 4, labels=True))
