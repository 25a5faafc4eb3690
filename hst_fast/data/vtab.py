"""VTAB-1k classification data in the released (NOAH / HST) folder format.

A task folder holds the images and list files (``train800val200.txt``, ``train800.txt``,
``val200.txt``, ``test.txt``), one ``relative/path label`` per line. The released recipe resizes
only: ``Resize((224, 224), bicubic)``, no crop or flip; normalization is left to the model's data
preprocessor so that the data loader moves uint8 tensors. Each item carries a stable sample id, the
SHA-256 of its image file, which keys the frozen-ViT feature cache (``hst_fast.feature_cache``): a
regenerated or replaced image gets a new id, a moved or renamed one keeps its id.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

VTAB_LISTS = ("train800val200.txt", "train800.txt", "val200.txt", "test.txt")


def read_vtab_list(list_file: Path, num_classes: Optional[int] = None) -> List[Tuple[str, int]]:
    """Parses ``relative/path label`` lines; raises ``ValueError`` naming the first bad line."""
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        path, _, label = line.strip().rpartition(" ")
        if not path or not label.lstrip("-").isdigit():
            raise ValueError(f"{list_file}:{number}: expected 'relative/path label', got {line!r}")
        label = int(label)
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise ValueError(f"{list_file}:{number}: label {label} is outside [0, {num_classes}) (num_classes)")
        samples.append((path, label))
    if not samples:
        raise ValueError(f"{list_file} lists no images")
    return samples


class ResizeToTensor:
    """PIL image -> resized (bicubic, as the released code) uint8 tensor [3, size, size]."""

    def __init__(self, size: int = 224):
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


class VTABDataset(Dataset):
    """One VTAB-1k task: ``data_root/ann_file`` lists the images; items are
    ``dict(inputs=uint8 [3, S, S], labels=int, sample_ids=str)``, ``sample_ids`` the SHA-256 of the image file.

    data_root: the task folder; ann_file: a list file in it (``train800val200.txt``, ``test.txt``);
    image_size: the resize target (224 in the released recipe); num_classes: labels must lie in
    [0, num_classes), checked on load.
    """

    # The same sample id always means the same ``inputs`` (content hash + resize-only transform): what the
    # feature cache (``hst_fast.openmmlab.feature_cache_checks``) requires of a dataset.
    STABLE_SAMPLE_IDS = True

    def __init__(self, data_root: str, ann_file: str, image_size: int = 224, num_classes: Optional[int] = None):
        self.data_root = Path(data_root)
        list_file = self.data_root / ann_file
        if not list_file.is_file():
            present = sorted(p.name for p in self.data_root.glob("*.txt")) if self.data_root.is_dir() else []
            raise FileNotFoundError(
                f"VTAB list {list_file} not found (a VTAB-1k task folder holds {', '.join(VTAB_LISTS)}; "
                f"found {present or 'no list files'} in {self.data_root})"
            )
        self.samples = read_vtab_list(list_file, num_classes)
        missing = [path for path, _ in self.samples if not (self.data_root / path).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.samples)} images named in {list_file} do not exist under "
                f"{self.data_root}, e.g. {missing[:5]}"
            )
        self.transform = ResizeToTensor(image_size)
        self.metainfo: Dict = dict(num_classes=num_classes, list_file=str(list_file))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict:
        path, label = self.samples[index]
        data = (self.data_root / path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            return dict(inputs=self.transform(image), labels=label, sample_ids=hashlib.sha256(data).hexdigest())
