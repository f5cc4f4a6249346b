"""Real-data loaders on tiny fixtures written in CelebA's exact file format."""
import numpy as np
import pytest
import torch
from PIL import Image

from train.core.common import UserError
from train.data.folders import CELEBA_ATTRIBUTES, AttributeFolderDataset, CelebADataset, ImageFolderDataset, load_image

FILES = [f"{i:06d}.jpg" for i in range(1, 7)]
PARTITION = [0, 0, 0, 1, 2, 2]


def write_image(path, w=178, h=218, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = color
    arr[: max(h - w, 0) // 2] = 0  # a top band that the square centre crop cuts away
    Image.fromarray(arr).save(path)


def labels(i):
    return [1 if (i + j) % 3 == 0 else -1 for j in range(40)]


def make_celeba(root, files=FILES, partition=PARTITION, count=None, names=CELEBA_ATTRIBUTES):
    for f in files:
        write_image(root / "img_align_celeba" / f)
    rows = [f"{f} " + " ".join(f"{v:2d}" for v in labels(i)) for i, f in enumerate(files)]
    header = [str(len(files) if count is None else count), " ".join(names)]
    (root / "list_attr_celeba.txt").write_text("\n".join(header + rows) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, partition)))
    return root


def test_celeba_parsing_splits_and_crop(tmp_path):
    root = make_celeba(tmp_path)
    sizes = {split: len(CelebADataset(root, split, 32)) for split in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 1, "test": 2}
    ds = CelebADataset(root, "test", 32)
    assert ds.files == ["000005.jpg", "000006.jpg"] and ds.attributes == CELEBA_ATTRIBUTES
    item = ds[1]
    assert set(item) == {"image", "attributes", "index"} and item["index"] == 1
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert torch.equal(item["attributes"], torch.tensor([float(v > 0) for v in labels(5)]))
    # The centre crop drops the black band at the top: every pixel is the red fill.
    assert item["image"][0].min() > 0.4 and item["image"][1].max() < -0.6


def test_celeba_attribute_subset(tmp_path):
    root = make_celeba(tmp_path)
    ds = CelebADataset(root, "train", 16, attributes=["Smiling", "Male"])
    assert ds.attributes == ["Smiling", "Male"]
    expected = [float(labels(0)[CELEBA_ATTRIBUTES.index(n)] > 0) for n in ("Smiling", "Male")]
    assert ds[0]["attributes"].tolist() == expected
    with pytest.raises(UserError, match="unknown CelebA attribute.*Smiley.*valid names: 5_o_Clock_Shadow"):
        CelebADataset(root, "train", 16, attributes=["Smiley"])


def test_celeba_errors(tmp_path):
    with pytest.raises(UserError, match="img_align_celeba.*expected a CelebA root"):
        CelebADataset(tmp_path / "nothing", "train")
    root = make_celeba(tmp_path / "a")
    with pytest.raises(UserError, match="unknown CelebA split"):
        CelebADataset(root, "training")
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(UserError, match="missing file .*list_eval_partition.txt"):
        CelebADataset(root, "train")

    root = make_celeba(tmp_path / "b", count=99)
    with pytest.raises(UserError, match="says 99 images but lists 6"):
        CelebADataset(root, "train")

    root = make_celeba(tmp_path / "c")
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4] + [lines[4].rsplit(" ", 1)[0]] + lines[5:]) + "\n")
    with pytest.raises(UserError, match=r"list_attr_celeba.txt:5: expected a file name and 40 values, got 40"):
        CelebADataset(root, "train")
    path.write_text("\n".join(lines[:4] + [lines[4].replace("-1", " 7", 1)] + lines[5:]) + "\n")
    with pytest.raises(UserError, match=r":5: attribute value must be 0/1 or -1/1, got '7'"):
        CelebADataset(root, "train")
    path.write_text("six\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(UserError, match=r":1: expected the image count"):
        CelebADataset(root, "train")

    root = make_celeba(tmp_path / "d")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 3\n")
    with pytest.raises(UserError, match=r"list_eval_partition.txt:2: expected `filename 0\|1\|2`"):
        CelebADataset(root, "train")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000009.jpg 0\n")
    with pytest.raises(UserError, match=r":2: 000009.jpg has no row in list_attr_celeba.txt"):
        CelebADataset(root, "train")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(UserError, match="lists no images for split 'test'"):
        CelebADataset(root, "test")
    (root / "img_align_celeba" / "000001.jpg").unlink()
    with pytest.raises(UserError, match="1 image.*missing from .*img_align_celeba.*000001.jpg"):
        CelebADataset(root, "train")

    root = make_celeba(tmp_path / "e")
    (root / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    ds = CelebADataset(root, "train", 16)
    with pytest.raises(UserError, match="cannot read image .*000002.jpg"):
        ds[1]


def test_image_folder(tmp_path):
    write_image(tmp_path / "b" / "x.PNG", 40, 30)
    write_image(tmp_path / "a.jpg", 30, 40)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, 24)
    assert [p.name for p in ds.files] == ["a.jpg", "x.PNG"] and len(ds) == 2
    item = ds[1]
    assert set(item) == {"image", "index"} and item["image"].shape == (3, 24, 24)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .jpg/.jpeg/.png images found"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(UserError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "missing")


def test_attribute_folder(tmp_path):
    write_image(tmp_path / "img" / "one.png", 20, 20)
    write_image(tmp_path / "img" / "two.jpg", 20, 20)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("filename,smile,hat\none.png,1,-1\ntwo.jpg,0,1\n\n")
    ds = AttributeFolderDataset(tmp_path / "img", csv_path, 8)
    assert ds.attributes == ["smile", "hat"] and len(ds) == 2
    assert ds[0]["attributes"].tolist() == [1.0, 0.0] and ds[1]["attributes"].tolist() == [0.0, 1.0]
    assert ds[1]["image"].shape == (3, 8, 8)

    cases = {
        "file,smile\none.png,1\n": ":1: header must be `filename,attr1",
        "filename,smile,smile\none.png,1,1\n": ":1: attribute names must be non-empty and unique",
        "filename,smile,hat\none.png,1\n": ":2: expected 3 fields, got 2",
        "filename,smile\none.png,yes\n": ":2: attribute value must be 0/1 or -1/1, got 'yes'",
        "filename,smile\none.png,1\nthree.png,0\n": ":3: image .*three.png not found",
        "filename,smile\n": "lists no images",
    }
    for text, message in cases.items():
        csv_path.write_text(text)
        with pytest.raises(UserError, match=message):
            AttributeFolderDataset(tmp_path / "img", csv_path, 8)
    with pytest.raises(UserError, match="attribute CSV not found"):
        AttributeFolderDataset(tmp_path / "img", tmp_path / "nope.csv", 8)


def test_load_image_crop_and_range(tmp_path):
    write_image(tmp_path / "wide.png", 60, 20, color=(0, 255, 0))
    x = load_image(tmp_path / "wide.png", 10)
    assert x.shape == (3, 10, 10) and float(x[1].min()) > 0.99 and float(x[0].max()) < -0.99
