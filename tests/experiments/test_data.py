"""Offline datasets: the idx reader, Fashion-MNIST discovery, digits, synthetic, subsets."""

from __future__ import annotations

import gzip
import os
import struct
import sys

import numpy as np
import pytest
import torch

import topo_pai
from topo_pai.experiments import data as D
from topo_pai.experiments.data import Dataset, DatasetNotFoundError, load_dataset, read_idx

SYSTEM_FILES = [os.path.join(D.FASHION_MNIST_SYSTEM_DIR, f + ".gz")
                for stems in D._FASHION_FILES.values() for f in stems]
HAVE_FASHION = all(os.path.isfile(p) for p in SYSTEM_FILES)
NEEDS_FASHION = pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Fashion-MNIST is not installed in {D.FASHION_MNIST_SYSTEM_DIR} "
    f"(install it with: {D.APT_HINT})")


# ---------------------------------------------------------------------------
# an independent idx writer (struct, not numpy's byte-order machinery)
# ---------------------------------------------------------------------------

_CODES = {np.uint8: (0x08, "B"), np.int8: (0x09, "b"), np.int16: (0x0B, "h"),
          np.int32: (0x0C, "i"), np.float32: (0x0D, "f"), np.float64: (0x0E, "d")}


def idx_bytes(arr: np.ndarray) -> bytes:
    code, fmt = _CODES[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    body = struct.pack(f">{arr.size}{fmt}", *arr.ravel().tolist())
    return header + body


def write_idx(path, arr: np.ndarray | None = None, raw: bytes | None = None):
    data = idx_bytes(arr) if raw is None else raw
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


# ---------------------------------------------------------------------------
# read_idx
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("arr", [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-128, -1, 0, 127], dtype=np.int8),
    np.array([[-30000, 2], [3, 30000]], dtype=np.int16),
    np.array([-(2**31), 1, 2**31 - 1], dtype=np.int32),
    np.array([[0.5, -1.25e-3, 3.0e30]], dtype=np.float32),
    np.array([np.pi, -np.e], dtype=np.float64),
], ids=["u8", "i8", "i16", "i32", "f32", "f64"])
def test_idx_round_trip(tmp_path, arr, suffix):
    got = read_idx(write_idx(tmp_path / f"a-idx{suffix}", arr))
    assert got.shape == arr.shape
    assert got.dtype == arr.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("raw", [
    bytes([1, 0, 0x08, 1, 0, 0, 0, 1, 5]),     # first magic byte not zero
    bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]),     # unknown type code
    bytes([0, 0, 0x08, 0]),                    # zero dimensions
    b"",                                        # empty file
    b"\x89PNG\r\n\x1a\n",                       # not an idx file at all
])
def test_idx_bad_magic_names_the_file(tmp_path, raw):
    path = write_idx(tmp_path / "bad-idx1-ubyte", raw=raw)
    with pytest.raises(ValueError, match="magic") as info:
        read_idx(path)
    assert "bad-idx1-ubyte" in str(info.value)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_truncated_or_padded(tmp_path, suffix):
    good = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    path = write_idx(tmp_path / f"t-idx3-ubyte{suffix}", raw=good[:-7])
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert "t-idx3-ubyte" in str(info.value)
    write_idx(path, raw=good[:10])  # header cut inside the dimensions
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)
    write_idx(path, raw=good + b"\x00")
    with pytest.raises(ValueError, match="longer"):
        read_idx(path)


def test_idx_corrupt_gzip_and_missing(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8)))
    path = tmp_path / "c-idx1-ubyte.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="c-idx1-ubyte.gz"):
        read_idx(path)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.gz")


# ---------------------------------------------------------------------------
# Fashion-MNIST discovery on tiny fake idx files
# ---------------------------------------------------------------------------

def fake_fashion(directory, n_train=30, n_test=20, gz=True, seed=0):
    """Write Fashion-MNIST-format files (small N, 28x28); return the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        img_stem, lbl_stem = D._FASHION_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(directory / (img_stem + suffix), images)
        write_idx(directory / (lbl_stem + suffix), labels)
        out[split] = (images, labels)
    return out


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """Hide the real Fashion-MNIST: no env var, system dir pointed at an empty place."""
    monkeypatch.delenv(D.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(D, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-copy"))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_from_root(tmp_path, no_system_fashion, gz):
    written = fake_fashion(tmp_path / "fm", gz=gz)
    for split in ("train", "test"):
        ds = load_dataset("fashion-mnist", split, root=tmp_path / "fm")
        images, labels = written[split]
        assert ds.x.shape == (len(images), 1, 28, 28) and ds.x.dtype == torch.float32
        assert ds.input_shape == (1, 28, 28) and len(ds) == len(images)
        expected = (images.astype(np.float32) / 255 - 0.2860) / 0.3530
        np.testing.assert_allclose(ds.x[:, 0].numpy(), expected, rtol=1e-6, atol=1e-6)
        assert ds.y.dtype == torch.int64 and ds.y.tolist() == labels.tolist()
        assert ds.num_classes == 10 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == \
            "Ankle boot"


def test_fashion_search_order(tmp_path, monkeypatch, no_system_fashion):
    env_data = fake_fashion(tmp_path / "env", seed=1)
    root_data = fake_fashion(tmp_path / "root" / "FashionMNIST" / "raw", seed=2)  # torchvision
    monkeypatch.setenv(D.FASHION_MNIST_ENV, str(tmp_path / "env"))
    from_env = load_dataset("fashion-mnist", "test")
    assert from_env.y.tolist() == env_data["test"][1].tolist()
    np.testing.assert_allclose(from_env.x[:, 0].numpy() * 0.3530 + 0.2860,
                               env_data["test"][0] / 255, atol=1e-6)
    from_root = load_dataset("fashion-mnist", "test", root=tmp_path / "root")
    np.testing.assert_allclose(from_root.x[:, 0].numpy() * 0.3530 + 0.2860,
                               root_data["test"][0] / 255, atol=1e-6)
    # the system directory is used when nothing else is set
    monkeypatch.delenv(D.FASHION_MNIST_ENV)
    monkeypatch.setattr(D, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "env"))
    assert torch.equal(load_dataset("fashion-mnist", "test").x, from_env.x)


def test_fashion_missing_raises_with_apt_hint(tmp_path, monkeypatch, no_system_fashion):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=empty)
    err = info.value
    assert isinstance(err, topo_pai.TopoPaiError) and isinstance(err, FileNotFoundError)
    msg = str(err)
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert str(empty) in msg and "root=" in msg and D.FASHION_MNIST_ENV in msg
    # without root: the env directory and the system directory are both listed
    monkeypatch.setenv(D.FASHION_MNIST_ENV, str(empty))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "test")
    assert str(empty) in str(info.value) and D.FASHION_MNIST_SYSTEM_DIR in str(info.value)
    # a split whose label file is missing is not found either
    fake_fashion(tmp_path / "half")
    os.remove(tmp_path / "half" / "t10k-labels-idx1-ubyte.gz")
    load_dataset("fashion-mnist", "train", root=tmp_path / "half")
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", "test", root=tmp_path / "half")


def test_fashion_inconsistent_files(tmp_path, no_system_fashion):
    root = tmp_path / "fm"
    fake_fashion(root)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(29, dtype=np.uint8))
    with pytest.raises(ValueError, match="30 images.*29 labels"):
        load_dataset("fashion-mnist", root=root)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.full(30, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match="label 10"):
        load_dataset("fashion-mnist", root=root)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros((30, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", root=root)
    write_idx(root / "train-images-idx3-ubyte.gz", raw=b"\x00\x00\x08\x03\x00")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", root=root)


def test_fashion_cache_sees_replaced_files(tmp_path, no_system_fashion):
    root = tmp_path / "fm"
    fake_fashion(root, seed=3)
    first = load_dataset("fashion-mnist", "test", root=root)
    again = load_dataset("fashion-mnist", "test", root=root)
    assert torch.equal(first.x, again.x) and first.x is not again.x
    again.x.zero_()  # a caller's in-place edit must not reach the cache
    assert torch.equal(load_dataset("fashion-mnist", "test", root=root).x, first.x)
    new = fake_fashion(root, seed=4)
    path = root / "t10k-images-idx3-ubyte.gz"
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    reloaded = load_dataset("fashion-mnist", "test", root=root)
    np.testing.assert_allclose(reloaded.x[:, 0].numpy() * 0.3530 + 0.2860,
                               new["test"][0] / 255, atol=1e-6)


@NEEDS_FASHION
def test_real_fashion_mnist():
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.num_classes == test.num_classes == 10
    assert train.y.bincount().tolist() == [6000] * 10
    assert test.y.bincount().tolist() == [1000] * 10
    assert abs(train.x.mean().item()) < 0.01 and abs(train.x.std().item() - 1) < 0.01
    assert abs(test.x.mean().item()) < 0.03
    # pixel range of [0, 255] images after normalisation
    assert train.x.min().item() == pytest.approx(-0.2860 / 0.3530, abs=1e-5)
    assert train.x.max().item() == pytest.approx((1 - 0.2860) / 0.3530, abs=1e-5)
    small = load_dataset("fashion-mnist", "train", limit=500, seed=7)
    assert small.y.bincount().tolist() == [50] * 10
    assert torch.equal(small.x, train.subset(500, seed=7).x)


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------

def test_digits_split_and_determinism():
    datasets = pytest.importorskip("sklearn.datasets")
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.x.shape == (1438, 1, 8, 8) and test.x.shape == (359, 1, 8, 8)
    assert train.input_shape == (1, 8, 8) and train.classes == tuple("0123456789")
    # the split is stratified (20% of each class in test) and a partition of the 1797 images
    bunch = datasets.load_digits()
    per_class = np.bincount(bunch.target)
    assert np.all(np.abs(test.y.bincount().numpy() - 0.2 * per_class) <= 0.5)
    def rows(ds):  # back to the 0..16 integers of load_digits
        ints = np.rint((ds.x.flatten(1).numpy() * D.DIGITS_STD + D.DIGITS_MEAN) * 16)
        return [tuple(r) for r in ints.astype(int).tolist()]

    everything = [tuple(r) for r in bunch.images.reshape(len(bunch.images), -1).astype(int).tolist()]
    assert sorted(rows(train) + rows(test)) == sorted(everything)
    assert abs(train.x.mean().item()) < 1e-3 and abs(train.x.std().item() - 1) < 1e-3
    again = load_dataset("digits", seed=123)  # seed moves only the limit selection
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)
    assert torch.equal(load_dataset("digits", limit=100, seed=5).x, train.subset(100, 5).x)


def test_digits_without_sklearn(monkeypatch):
    D._digits_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    try:
        with pytest.raises(ImportError, match="pip install scikit-learn"):
            load_dataset("digits")
    finally:
        D._digits_arrays.cache_clear()


# ---------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------

def test_synthetic_defaults_and_determinism():
    train = load_dataset("synthetic")
    test = load_dataset("synthetic", "test")
    assert train.x.shape == (2048, 1, 28, 28) and test.x.shape == (512, 1, 28, 28)
    assert train.y.bincount().tolist() == [205] * 8 + [204] * 2
    assert torch.equal(load_dataset("synthetic").x, train.x)
    assert torch.equal(load_dataset("synthetic").y, train.y)
    assert not torch.equal(train.x[:512], test.x)  # different streams
    assert abs(train.x.mean().item()) < 0.05 and abs(train.x.std().item() - 1) < 0.05
    other = load_dataset("synthetic", input_shape=(3, 5, 7), num_classes=4, n=10, noise=0.0)
    assert other.x.shape == (10, 3, 5, 7) and other.num_classes == 4 and len(other.classes) == 4
    # noise=0: every sample is exactly its class prototype
    for c in range(4):
        members = other.x[other.y == c]
        assert torch.allclose(members, members[:1].expand_as(members))


def test_synthetic_is_learnable():
    torch.manual_seed(0)
    train = load_dataset("synthetic", input_shape=(1, 12, 12), n=512)
    test = load_dataset("synthetic", "test", input_shape=(1, 12, 12), n=256)
    # multinomial logistic regression, 20 full-batch gradient steps
    w = torch.zeros(144, 10, requires_grad=True)
    xtr = train.x.flatten(1)
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(xtr @ w, train.y)
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= 0.5 * grad
    with torch.no_grad():
        acc = ((test.x.flatten(1) @ w).argmax(1) == test.y).float().mean().item()
    assert acc > 0.8  # chance is 0.1


def test_synthetic_bad_arguments():
    with pytest.raises(TypeError, match="'colour'"):
        load_dataset("synthetic", colour=True)
    with pytest.raises(ValueError, match="input_shape"):
        load_dataset("synthetic", input_shape=(28, 28))
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset("synthetic", num_classes=1)
    with pytest.raises(ValueError, match="noise"):
        load_dataset("synthetic", noise=-1)
    with pytest.raises(ValueError, match="n must"):
        load_dataset("synthetic", n=0)


# ---------------------------------------------------------------------------
# subset / limit and the common API
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    return load_dataset("synthetic", input_shape=(1, 4, 4), num_classes=3, n=90)


def test_subset_is_deterministic_stratified_and_nested(small):
    a, b = small.subset(30, seed=1), small.subset(30, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.y.bincount().tolist() == [10, 10, 10]
    assert not torch.equal(small.subset(30, seed=2).x, a.x)
    # nested: the 12-sample subset lies inside the 30-sample one
    rows = {tuple(r) for r in a.x.flatten(1).tolist()}
    assert all(tuple(r) in rows for r in small.subset(12, seed=1).x.flatten(1).tolist())
    assert len(small.subset(90).y) == 90 and small.subset(7).y.bincount().max() <= 3
    assert a.name == small.name and a.split == small.split and a.classes == small.classes


def test_subset_bad_n_and_input_untouched(small):
    before = small.x.clone()
    small.subset(10)
    assert torch.equal(small.x, before) and len(small) == 90
    with pytest.raises(ValueError, match="n=91"):
        small.subset(91)
    with pytest.raises(ValueError, match="n must"):
        small.subset(0)
    with pytest.raises(ValueError, match="seed"):
        small.subset(5, seed=-1)


def test_limit_matches_subset(small):
    lim = load_dataset("synthetic", input_shape=(1, 4, 4), num_classes=3, n=90, limit=20, seed=4)
    assert torch.equal(lim.x, small.subset(20, seed=4).x)
    full = load_dataset("synthetic", input_shape=(1, 4, 4), num_classes=3, n=90, limit=1000)
    assert torch.equal(full.x, small.x)
    with pytest.raises(ValueError, match="limit"):
        load_dataset("synthetic", limit=0)


def test_unknown_name_split_and_options():
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10")
    assert all(name in str(info.value) for name in D.available_datasets())
    with pytest.raises(ValueError, match="Did you mean 'digits'"):
        load_dataset("digit")
    with pytest.raises(ValueError, match="split"):
        load_dataset("synthetic", "validation")
    with pytest.raises(TypeError, match="'input_shape'"):
        load_dataset("digits", input_shape=(1, 8, 8))
    assert D._canonical_name("FashionMNIST") == D._canonical_name("fashion_mnist") == \
        "fashion-mnist"
    assert D.available_datasets() == ["fashion-mnist", "digits", "synthetic"]


def test_dataset_validates_its_fields():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    Dataset("t", "train", x, y, 1, ("a",))
    with pytest.raises(ValueError, match="float32"):
        Dataset("t", "train", x.double(), y, 1, ("a",))
    with pytest.raises(ValueError, match="int64"):
        Dataset("t", "train", x, y.int(), 1, ("a",))
    with pytest.raises(ValueError, match="3 labels"):
        Dataset("t", "train", x, y[:3], 1, ("a",))
    with pytest.raises(ValueError, match="labels outside"):
        Dataset("t", "train", x, y + 1, 1, ("a",))
    with pytest.raises(ValueError, match="classes"):
        Dataset("t", "train", x, y, 2, ("a",))


def test_experiments_package_is_lazy():
    import topo_pai.experiments as E

    assert E.load_dataset is load_dataset and E.DatasetNotFoundError is DatasetNotFoundError
    with pytest.raises(AttributeError):
        E.does_not_exist  # noqa: B018


def test_every_prefix_of_the_stratified_order_keeps_the_documented_bound():
    """The docs said 'within one sample'; for a small class among large ones a prefix can
    be off by more (review of 2026-12-04). The bound now documented, 0.5 + C * share / 2,
    holds on every prefix of random imbalanced label sets, and one sample on balanced ones."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        balanced = trial % 3 == 0
        counts = np.full(5, 12) if balanced else rng.integers(1, 30, size=rng.integers(2, 7))
        labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        order = D._stratified_order(labels, seed=trial)
        share = counts / counts.sum()
        bound = 1.0 if balanced else 0.5 + len(counts) * share / 2
        seen = np.zeros(len(counts))
        for n, i in enumerate(order, 1):
            seen[labels[i]] += 1
            assert np.all(np.abs(seen - n * share) <= bound + 1e-9), (trial, n, seen)
