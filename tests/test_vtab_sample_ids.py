"""VTABDataset's sample ids, which key the feature cache: the same image file gives the same id wherever it lies,
another image (a regenerated data set) a new one."""
from __future__ import annotations

import shutil

from hst_fast.data import VTABDataset, make_shapes_vtab


def test_sample_ids_follow_the_image_content_not_its_name(tmp_path):
    make_shapes_vtab(tmp_path / "a", num_train=4, num_test=1, image_size=32, seed=0)
    first = VTABDataset(str(tmp_path / "a"), "train800val200.txt", image_size=32)
    ids = [first[i]["sample_ids"] for i in range(len(first))]
    assert len(set(ids)) == 4 and all(len(i) == 64 for i in ids)  # SHA-256 hex: a plain file name
    assert [first[i]["sample_ids"] for i in range(len(first))] == ids  # stable across reads (epochs)

    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "a", moved)
    (moved / "images" / "train_00000.png").rename(moved / "images" / "renamed.png")
    listing = (moved / "train800val200.txt").read_text().replace("train_00000.png", "renamed.png")
    (moved / "train800val200.txt").write_text(listing)
    assert [VTABDataset(str(moved), "train800val200.txt", image_size=32)[i]["sample_ids"] for i in range(4)] == ids

    make_shapes_vtab(tmp_path / "b", num_train=4, num_test=1, image_size=32, seed=1)  # same names, other images
    other = VTABDataset(str(tmp_path / "b"), "train800val200.txt", image_size=32)
    assert not {other[i]["sample_ids"] for i in range(4)} & set(ids)
