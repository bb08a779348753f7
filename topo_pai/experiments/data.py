"""Offline image-classification datasets as normalised torch tensors.

Nothing is ever downloaded. Three datasets are available:

* ``"fashion-mnist"`` (1x28x28, 10 classes, 60000/10000): read from the idx
  files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), from ``root=`` or from the
  directory in ``$TOPO_PAI_FASHION_MNIST``.
* ``"digits"`` (1x8x8, 10 classes, 1438/359): scikit-learn's bundled copy of
  the UCI handwritten digits, split 80/20 per class with a fixed seed.
* ``"synthetic"`` (any shape): class prototypes plus Gaussian noise, generated
  deterministically; learnable in a few steps, for shape and smoke tests.

Examples
--------
>>> ds = load_dataset("synthetic", input_shape=(1, 8, 8), num_classes=3, n=60)
>>> ds
Dataset(name='synthetic', split='train', n=60, input_shape=(1, 8, 8), num_classes=3)
>>> ds.x.dtype, ds.y.dtype, ds.y.bincount().tolist()
(torch.float32, torch.int64, [20, 20, 20])
>>> ds.subset(9, seed=1).y.bincount().tolist()  # stratified
[3, 3, 3]
"""

from __future__ import annotations

import functools
import gzip
import math
import numbers
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from topo_pai.errors import TopoPaiError
from topo_pai.registry import Registry, params_from_signature, squash

__all__ = ["Dataset", "DatasetNotFoundError", "available_datasets", "load_dataset", "read_idx"]

FASHION_MNIST_ENV = "TOPO_PAI_FASHION_MNIST"
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
APT_HINT = "sudo apt-get install dataset-fashion-mnist"

# mean/std of the digits training split after scaling pixels to [0, 1]
DIGITS_MEAN, DIGITS_STD = 0.3048, 0.3757
_DIGITS_SPLIT_SEED = 20240607  # fixed: the split must not move with load_dataset(seed=...)
_DIGITS_TEST_FRACTION = 0.2

_SYNTHETIC_SEED = 0x70B0_DA7A
_SYNTHETIC_DEFAULT_N = {"train": 2048, "test": 512}

_SPLITS = ("train", "test")


class DatasetNotFoundError(TopoPaiError, FileNotFoundError):
    """The files of an offline dataset are not on this machine."""


# ---------------------------------------------------------------------------
# the Dataset container
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of an image-classification dataset, held in memory.

    Attributes
    ----------
    name, split : str
        Dataset name (as in :func:`available_datasets`) and ``"train"``/``"test"``
        (``"val"`` for a split held out of the training images, :meth:`split_off`).
    x : torch.Tensor
        float32 images, ``N x C x H x W``, normalised to about zero mean and
        unit variance.
    y : torch.Tensor
        int64 labels in ``[0, num_classes)``.
    num_classes : int
    classes : tuple of str
        Human-readable class names, ``len(classes) == num_classes``.
    """

    name: str
    split: str
    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    num_classes: int
    classes: tuple[str, ...] = field(repr=False)

    def __post_init__(self):
        if not isinstance(self.x, torch.Tensor) or self.x.dim() != 4 \
                or self.x.dtype != torch.float32:
            raise ValueError("Dataset.x must be a float32 tensor of shape N x C x H x W, got "
                             f"{getattr(self.x, 'dtype', type(self.x))} "
                             f"{tuple(getattr(self.x, 'shape', ()))}")
        if not isinstance(self.y, torch.Tensor) or self.y.dim() != 1 \
                or self.y.dtype != torch.int64:
            raise ValueError("Dataset.y must be a 1-D int64 tensor of labels")
        if len(self.x) != len(self.y):
            raise ValueError(f"Dataset.x has {len(self.x)} samples but Dataset.y has "
                             f"{len(self.y)} labels")
        if len(self.classes) != self.num_classes:
            raise ValueError(f"Dataset.classes names {len(self.classes)} classes, "
                             f"num_classes={self.num_classes}")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise ValueError(f"Dataset.y holds labels outside [0, {self.num_classes})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one sample, ``(C, H, W)`` (what ``topo_pai.from_torch`` expects)."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """A stratified random subset of ``n`` samples, deterministic in ``seed``.

        Every class gets ``n`` times its share of the split, within
        ``0.5 + C * share / 2`` samples for ``C`` classes (one sample on a
        balanced split such as Fashion-MNIST's; more for a small class among
        large ones). Subsets with the same seed are nested: ``subset(m, s)`` is
        contained in ``subset(n, s)`` for ``m < n``. Samples keep their
        original order.

        Parameters
        ----------
        n : int
            Number of samples, ``1 <= n <= len(self)``.
        seed : int
            Seed of the random choice within each class.

        Examples
        --------
        >>> ds = load_dataset("synthetic", input_shape=(1, 4, 4), num_classes=4, n=100)
        >>> small = ds.subset(10, seed=3)
        >>> len(small), small.y.bincount().tolist()
        (10, [3, 3, 2, 2])
        >>> bool((small.x == ds.subset(10, seed=3).x).all())
        True
        """
        n = _check_count("n", n)
        if n > len(self):
            raise ValueError(f"n={n} is larger than the dataset ({len(self)} samples in "
                             f"{self.name!r} {self.split})")
        idx = torch.from_numpy(np.sort(_stratified_order(self.y.numpy(), seed)[:n]))
        return Dataset(self.name, self.split, self.x[idx], self.y[idx], self.num_classes,
                       self.classes)

    def split_off(self, n: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Hold out a stratified validation split: ``(rest, held_out)``.

        ``held_out`` is :meth:`subset` ``(n, seed)`` (so it is stratified and
        deterministic in ``seed``) with split name ``"val"``; ``rest`` is every
        other sample, in the original order. The two are disjoint and together
        are the whole split.

        Parameters
        ----------
        n : int
            Number of held-out samples, ``1 <= n < len(self)``.
        seed : int
            Seed of the random choice within each class.

        Examples
        --------
        >>> ds = load_dataset("synthetic", input_shape=(1, 4, 4), num_classes=4, n=100)
        >>> rest, val = ds.split_off(20, seed=1)
        >>> len(rest), len(val), val.split, val.y.bincount().tolist()
        (80, 20, 'val', [5, 5, 5, 5])
        """
        n = _check_count("n", n)
        if n >= len(self):
            raise ValueError(f"cannot hold out n={n} of {len(self)} samples in {self.name!r} "
                             f"{self.split}: leave at least one for training")
        held = torch.from_numpy(np.sort(_stratified_order(self.y.numpy(), seed)[:n]))
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[held] = False
        return (Dataset(self.name, self.split, self.x[keep], self.y[keep], self.num_classes,
                        self.classes),
                Dataset(self.name, "val", self.x[held], self.y[held], self.num_classes,
                        self.classes))


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(y))`` whose every prefix is stratified.

    Within each class the order is random; classes are interleaved by the
    fractional position ``(rank + 0.5) / class_size`` so that any prefix holds
    each class in proportion to its size: a class's count is within ``0.5`` of
    ``t * class_size`` for the prefix's last key ``t``, and ``t`` within
    ``C / 2`` samples of the prefix's share, so the count is within
    ``0.5 + C * share / 2`` of its quota (one sample for ``C`` equal classes).
    Ties go to the earlier sample of the random permutation.
    """
    seed = _check_seed(seed)
    y = np.asarray(y)
    perm = np.random.default_rng(seed).permutation(len(y))
    yp = y[perm]
    _, codes, counts = np.unique(yp, return_inverse=True, return_counts=True)
    by_class = np.argsort(codes, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(y), dtype=np.int64)
    rank[by_class] = np.arange(len(y)) - starts[codes[by_class]]
    key = (rank + 0.5) / counts[codes]
    return perm[np.argsort(key, kind="stable")]


def _selection(y: np.ndarray, limit, seed) -> np.ndarray | None:
    """Sorted indices of the first ``limit`` samples of the stratified order."""
    seed = _check_seed(seed)
    if limit is None:
        return None
    limit = _check_count("limit", limit)
    if limit >= len(y):
        return None
    return np.sort(_stratified_order(y, seed)[:limit])


# ---------------------------------------------------------------------------
# idx files
# ---------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed or not.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B
    int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions
    and one big-endian uint32 per dimension; the data follow in C order,
    big-endian.

    Parameters
    ----------
    path : str or Path
        The file; a name ending in ``.gz`` is decompressed.

    Returns
    -------
    numpy.ndarray
        The array in native byte order (read-only for uint8 data, which is
        not copied).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a valid idx file: corrupt gzip stream, bad magic
        number, or a data size that does not match the header. The message
        names the file.

    Examples
    --------
    >>> import gzip, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx1-ubyte.gz")
    >>> with gzip.open(path, "wb") as f:
    ...     _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(path)
    array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file {str(path)!r} does not exist")
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"idx file {str(path)!r} is not a valid gzip stream ({exc}); "
                         "the file is corrupt or truncated") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES \
            or data[3] == 0:
        raise ValueError(f"idx file {str(path)!r} has a bad magic number "
                         f"{data[:4].hex() or '(empty file)'}: expected 0000 followed by a type "
                         "code (08, 09, 0b, 0c, 0d, 0e) and the number of dimensions; the file "
                         "is corrupt or not an idx file")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"idx file {str(path)!r} is truncated: its header declares {ndim} "
                         f"dimensions but the file holds {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        what = "truncated" if len(data) - header < expected else "longer than its header says"
        raise ValueError(f"idx file {str(path)!r} is {what}: header shape {dims} needs "
                         f"{expected} data bytes, the file holds {len(data) - header}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr if dtype.byteorder in ("=", "|") else arr.astype(dtype.newbyteorder("="))


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    # keyed on mtime and size so a replaced file is re-read; read-only so the
    # cached copy cannot be changed by a caller
    arr = read_idx(path)
    arr.flags.writeable = False
    return arr


def _load_idx(path: Path) -> np.ndarray:
    st = path.stat()
    return _read_idx_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------

def _fashion_dirs(root) -> list[Path]:
    if root is not None:  # an explicit root is the only place looked at
        bases = [Path(root)]
    else:
        env = os.environ.get(FASHION_MNIST_ENV)
        bases = ([Path(env)] if env else []) + [Path(FASHION_MNIST_SYSTEM_DIR)]
    # torchvision keeps the same idx files under FashionMNIST/raw
    return [d for base in bases for d in (base, base / "FashionMNIST" / "raw")]


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _fashion_files(split: str, root) -> tuple[Path, Path]:
    stems = _FASHION_FILES[split]
    searched = _fashion_dirs(root)
    for d in searched:
        found = [_find_file(d, stem) for stem in stems]
        if all(found):
            return found[0], found[1]
    where = ", ".join(str(d) for d in searched)
    raise DatasetNotFoundError(
        f"Fashion-MNIST ({split} split) not found: looked for {stems[0]}[.gz] and "
        f"{stems[1]}[.gz] in {where}. Install the Debian package with "
        f"`{APT_HINT}` (it puts the files in {FASHION_MNIST_SYSTEM_DIR}), or pass "
        f"root=<directory with the idx files> (--data-root on the command line) or set "
        f"{FASHION_MNIST_ENV}=<directory>. "
        "topo_pai never downloads data.")


def _fashion_arrays(split: str, root) -> tuple[np.ndarray, np.ndarray]:
    image_path, label_path = _fashion_files(split, root)
    images, labels = _load_idx(image_path), _load_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{str(image_path)!r} should hold uint8 images N x H x W, "
                         f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{str(label_path)!r} should hold N uint8 labels, "
                         f"got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{str(image_path)!r} holds {len(images)} images but "
                         f"{str(label_path)!r} holds {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{str(label_path)!r} holds label {int(labels.max())}, "
                         f"Fashion-MNIST has {len(FASHION_MNIST_CLASSES)} classes")
    return images, labels


def _load_fashion(split, root, limit, seed) -> Dataset:
    images, labels = _fashion_arrays(split, root)
    idx = _selection(labels, limit, seed)
    if idx is not None:  # select before converting: 60000 float images are 188 MB
        images, labels = images[idx], labels[idx]
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    x.div_(255.0).sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset("fashion-mnist", split, x, y, len(FASHION_MNIST_CLASSES), FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------------------
# digits (scikit-learn)
# ---------------------------------------------------------------------------

def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("load_dataset('digits') needs scikit-learn, which is not installed: "
                          "pip install scikit-learn (or install topo_pai's data extra, "
                          "pip install 'topo_pai[data]')") from exc
    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    target = np.asarray(bunch.target, dtype=np.int64)
    train, test = _stratified_split(target, _DIGITS_TEST_FRACTION, _DIGITS_SPLIT_SEED)
    out = {"train": (images[train], target[train]), "test": (images[test], target[test])}
    for arrays in out.values():
        for a in arrays:
            a.flags.writeable = False
    return out


def _load_digits(split, limit, seed) -> Dataset:
    images, labels = _digits_arrays()[split]
    idx = _selection(labels, limit, seed)
    if idx is not None:
        images, labels = images[idx], labels[idx]
    x = torch.tensor(images).unsqueeze(1).sub_(DIGITS_MEAN).div_(DIGITS_STD)
    y = torch.tensor(labels)
    return Dataset("digits", split, x, y, 10, tuple(str(d) for d in range(10)))


# ---------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------

def _check_input_shape(input_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                              or v < 1 for v in shape):
        raise ValueError(f"input_shape must be three positive ints (C, H, W), got {input_shape!r}")
    return tuple(int(v) for v in shape)


def _prototypes(shape: tuple[int, int, int], num_classes: int) -> torch.Tensor:
    """One smooth, standardised pattern per class (same for train and test)."""
    c, h, w = shape
    rng = np.random.default_rng([_SYNTHETIC_SEED, c, h, w, num_classes])
    coarse = torch.from_numpy(rng.standard_normal((num_classes, c, min(h, 4), min(w, 4))))
    # low-frequency patterns, so convolutions and pooling keep the class signal
    protos = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                             align_corners=False)
    flat = protos.reshape(num_classes, -1)
    if flat.shape[1] > 1:
        flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-12)
    return flat.reshape(num_classes, c, h, w)


def _load_synthetic(split, limit, seed, input_shape=(1, 28, 28), num_classes=10, n=None,
                    noise=1.0) -> Dataset:
    shape = _check_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    n = _SYNTHETIC_DEFAULT_N[split] if n is None else _check_count("n", n)
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) \
            or not 0 <= float(noise) < math.inf:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    noise = float(noise)
    protos = _prototypes(shape, num_classes)
    # train and test are independent streams of one distribution
    rng = np.random.default_rng([_SYNTHETIC_SEED, *shape, num_classes, _SPLITS.index(split) + 1])
    y = rng.permutation(np.arange(n) % num_classes)
    eps = torch.from_numpy(rng.standard_normal((n, *shape)))
    # prototypes have unit variance, so dividing by sqrt(1 + noise^2) gives unit variance data
    x = ((protos[torch.from_numpy(y)] + noise * eps) / math.sqrt(1.0 + noise * noise))
    idx = _selection(y, limit, seed)
    if idx is not None:
        x, y = x[torch.from_numpy(idx)], y[idx]
    classes = tuple(f"class{i}" for i in range(num_classes))
    return Dataset("synthetic", split, x.float().contiguous(), torch.from_numpy(y.astype(np.int64)),
                   num_classes, classes)


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------

#: The offline datasets: each loader takes ``(split, root, limit, seed, **options)``, its
#: entry's params are the options it takes (only the synthetic data have any).
DATASETS = Registry("dataset", key=squash)
DATASETS.register("fashion-mnist", lambda split, root, limit, seed:
                  _load_fashion(split, root, limit, seed), summary="Fashion-MNIST (Debian files)")
DATASETS.register("digits", lambda split, root, limit, seed: _load_digits(split, limit, seed),
                  summary="scikit-learn's 8x8 digits, fixed 80/20 split")
DATASETS.register("synthetic", lambda split, root, limit, seed, **options:
                  _load_synthetic(split, limit, seed, **options),
                  params=params_from_signature(_load_synthetic, ("split", "limit", "seed"),
                                               "SyntheticOptions"),
                  summary="Gaussian noise around fixed class prototypes")


def shaped_options(name: str, input_shape=None, num_classes=None) -> dict:
    """The options that make dataset ``name`` give samples of ``input_shape`` and
    ``num_classes`` classes, for a dataset that takes them (the synthetic data); ``{}``
    for one whose files fix both (its shape is then checked against the model's).

    >>> shaped_options("synthetic", (3, 32, 32)), shaped_options("digits", (3, 32, 32))
    ({'input_shape': (3, 32, 32)}, {})
    """
    accepted = DATASETS.entry(name).option_names()
    given = {"input_shape": None if input_shape is None else tuple(input_shape),
             "num_classes": num_classes}
    return {k: v for k, v in given.items() if v is not None and k in accepted}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`.

    >>> available_datasets()
    ['fashion-mnist', 'digits', 'synthetic']
    """
    return DATASETS.names()


def _canonical_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    return DATASETS.canonical(name)


def load_dataset(name: str, split: str = "train", *, root=None, limit: int | None = None,
                 seed: int = 0, **kwargs) -> Dataset:
    """Load one split of an offline dataset (never downloads).

    Parameters
    ----------
    name : str
        One of :func:`available_datasets` (case, ``-`` and ``_`` are ignored,
        so ``"FashionMNIST"`` works).
    split : {"train", "test"}
    root : str or Path, optional
        Fashion-MNIST only: the directory with the four idx files (``.gz`` or
        not; a torchvision ``root`` holding ``FashionMNIST/raw`` works too).
        When given, it is the only place searched; otherwise
        ``$TOPO_PAI_FASHION_MNIST`` and then ``/usr/share/datasets/fashion-mnist``
        (the Debian package ``dataset-fashion-mnist``) are. Ignored by the
        datasets that need no files.
    limit : int, optional
        Keep at most ``limit`` samples: the first ``limit`` of a stratified
        random order drawn with ``seed`` (the same samples as
        ``Dataset.subset(limit, seed)``). ``None`` or a limit at least the
        split size keeps the whole split.
    seed : int
        Seed of the ``limit`` selection. It does not change the data itself:
        the digits split and the synthetic samples are fixed.
    **kwargs
        ``"synthetic"`` only: ``input_shape=(1, 28, 28)``, ``num_classes=10``,
        ``n`` (default 2048 train / 512 test) and ``noise=1.0`` (standard
        deviation of the per-pixel Gaussian noise relative to the unit-variance
        class prototypes; larger is harder).

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetNotFoundError
        Fashion-MNIST files not found; the message lists the searched
        directories and how to install them.
    ImportError
        ``"digits"`` without scikit-learn.
    ValueError
        Unknown name or split, a corrupt idx file, or a bad argument value.
    TypeError
        A keyword argument the dataset does not accept.

    Examples
    --------
    >>> test = load_dataset("synthetic", "test", input_shape=(3, 8, 8), num_classes=4, limit=40)
    >>> len(test), test.input_shape, test.num_classes
    (40, (3, 8, 8), 4)
    >>> fm = load_dataset("fashion-mnist", limit=1000)  # doctest: +SKIP
    >>> fm.x.shape, fm.classes[0]  # doctest: +SKIP
    (torch.Size([1000, 1, 28, 28]), 'T-shirt/top')
    """
    key = _canonical_name(name)
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    entry = DATASETS.entry(key)
    allowed = entry.option_names()
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        takes = f"it accepts {', '.join(sorted(allowed))}" if allowed else "it takes no options"
        raise TypeError(f"load_dataset({key!r}) got unexpected keyword argument(s) "
                        f"{', '.join(map(repr, unknown))}; {takes}")
    return entry.value(split, root, limit, seed, **kwargs)
