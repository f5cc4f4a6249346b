"""Loaders for real images on disk: CelebA in its published layout, plain image folders, and image
folders labelled by a CSV file. Nothing is downloaded: point them at data you already have.

Every dataset yields the same item dict as SpritesDataset: `image` float32 (3, size, size) in
[-1, 1] (square centre crop of the shorter side, then an antialiased resize), `attributes` float32
0/1 where the dataset has labels, and `index`. There is no `mask`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from train.core.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CELEBA_SPLITS = {"train": 0, "val": 1, "test": 2}
CELEBA_LAYOUT = ("expected a CelebA root with img_align_celeba/, list_attr_celeba.txt "
                 "and list_eval_partition.txt")
CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
]


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Read an image file, centre-crop it to a square and resize: float32 (3, size, size) in [-1, 1]."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side),
                           reducing_gap=3.0)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


def _binary(value: str, where: str) -> float:
    if value == "1":
        return 1.0
    if value in ("0", "-1"):
        return 0.0
    raise UserError(f"{where}: attribute value must be 0/1 or -1/1, got {value!r}")


def _select(names: list[str], wanted: list[str] | None, what: str) -> list[int]:
    """Column indices of `wanted` (all columns when None); unknown names are a UserError."""
    if wanted is None:
        return list(range(len(names)))
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise UserError(f"unknown {what} attribute(s) {unknown}; valid names: {', '.join(names)}")
    return [names.index(n) for n in wanted]


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"missing file {path}; {CELEBA_LAYOUT}")
    return path.read_text().splitlines()


class CelebADataset(torch.utils.data.Dataset):
    """CelebA (aligned & cropped): root/img_align_celeba/*.jpg, root/list_attr_celeba.txt
    (image count, then the 40 attribute names, then `file v1 .. v40` with values -1/1) and
    root/list_eval_partition.txt (`file 0|1|2` for train/val/test).

    attributes: a subset of CELEBA_ATTRIBUTES to return, in the given order (default all 40).
    """

    def __init__(self, root: str | Path, split: str = "train", size: int = 64, attributes: list[str] | None = None):
        root = Path(root)
        if split not in CELEBA_SPLITS:
            raise UserError(f"unknown CelebA split {split!r}; choose one of {list(CELEBA_SPLITS)}")
        image_dir = root / "img_align_celeba"
        if not image_dir.is_dir():
            raise UserError(f"missing folder {image_dir}; {CELEBA_LAYOUT}")
        attr_path = root / "list_attr_celeba.txt"
        lines = _read_lines(attr_path)
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise UserError(f"{attr_path}:1: expected the image count, then a line of attribute names")
        names = lines[1].split()
        columns = _select(names, attributes, "CelebA")
        labels = {}
        for lineno, line in enumerate(lines[2:], start=3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names) + 1:
                raise UserError(f"{attr_path}:{lineno}: expected a file name and {len(names)} values, "
                                f"got {len(parts)} fields")
            values = [_binary(v, f"{attr_path}:{lineno}") for v in parts[1:]]
            labels[parts[0]] = [values[c] for c in columns]
        if int(lines[0]) != len(labels):
            raise UserError(f"{attr_path}:1: says {int(lines[0])} images but lists {len(labels)}")

        part_path = root / "list_eval_partition.txt"
        files = []
        for lineno, line in enumerate(_read_lines(part_path), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise UserError(f"{part_path}:{lineno}: expected `filename 0|1|2`, got {line.strip()!r}")
            if int(parts[1]) == CELEBA_SPLITS[split]:
                if parts[0] not in labels:
                    raise UserError(f"{part_path}:{lineno}: {parts[0]} has no row in {attr_path.name}")
                files.append(parts[0])
        if not files:
            raise UserError(f"{part_path} lists no images for split {split!r}")
        present = set(os.listdir(image_dir))
        missing = [f for f in files if f not in present]
        if missing:
            raise UserError(f"{len(missing)} image(s) of split {split!r} missing from {image_dir}, "
                            f"e.g. {missing[0]}")
        self.root, self.image_dir, self.split, self.size = root, image_dir, split, size
        self.attributes = [names[c] for c in columns]
        self.files = files
        self.labels = torch.tensor([labels[f] for f in files], dtype=torch.float32).reshape(len(files), -1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        image = load_image(self.image_dir / self.files[i], self.size)
        return {"image": image, "attributes": self.labels[i], "index": i}


def _find_images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no .jpg/.jpeg/.png images found under {root}")
    return files


class ImageFolderDataset(torch.utils.data.Dataset):
    """Every .jpg/.jpeg/.png below `root` (recursively, sorted by path); no labels."""

    def __init__(self, root: str | Path, size: int = 64):
        self.root, self.size = Path(root), size
        self.files = _find_images(self.root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        return {"image": load_image(self.files[i], self.size), "index": i}


class AttributeFolderDataset(torch.utils.data.Dataset):
    """Images under `root` labelled by a CSV with header `filename,attr1,attr2,...` and 0/1 or
    -1/1 values; `filename` is relative to `root`. Rows follow the CSV's order."""

    def __init__(self, root: str | Path, csv_path: str | Path, size: int = 64):
        self.root, self.size = Path(root), size
        csv_path = Path(csv_path)
        if not self.root.is_dir():
            raise UserError(f"image folder not found: {self.root}")
        if not csv_path.is_file():
            raise UserError(f"attribute CSV not found: {csv_path} (expected header filename,attr1,attr2,...)")
        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or not rows[0] or rows[0][0].strip() != "filename" or len(rows[0]) < 2:
            raise UserError(f"{csv_path}:1: header must be `filename,attr1,attr2,...`")
        self.attributes = [name.strip() for name in rows[0][1:]]
        if len(set(self.attributes)) != len(self.attributes) or "" in self.attributes:
            raise UserError(f"{csv_path}:1: attribute names must be non-empty and unique")
        self.files, labels = [], []
        for lineno, row in enumerate(rows[1:], start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(self.attributes) + 1:
                raise UserError(f"{csv_path}:{lineno}: expected {len(self.attributes) + 1} fields, got {len(row)}")
            path = self.root / row[0].strip()
            if not path.is_file():
                raise UserError(f"{csv_path}:{lineno}: image {path} not found")
            self.files.append(path)
            labels.append([_binary(v.strip(), f"{csv_path}:{lineno}") for v in row[1:]])
        if not self.files:
            raise UserError(f"{csv_path} lists no images")
        self.labels = torch.tensor(labels, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        return {"image": load_image(self.files[i], self.size), "attributes": self.labels[i], "index": i}
