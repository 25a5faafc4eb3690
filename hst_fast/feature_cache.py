"""On-disk cache of frozen-ViT features (``backbone_grad='none'``, deterministic input pipelines).

With a frozen ViT and a deterministic pipeline (VTAB-1k's resize-only one), every epoch feeds the
side network the same ViT features; the cache stores them once and later epochs skip the ViT.

Layout: ``<directory>/<backbone fingerprint>/<sample id>.feat``, one file per sample holding
every block's class token and patch tokens ``[L, 1 + Hv*Wv, D]`` in fp16/bf16, behind a JSON
header (input size, dtype, shape, CRC-32 of the data). The key is thus sample id + backbone
fingerprint + input size + dtype. Files are written to a temporary name and renamed; a file
that is partial, corrupted or made for another input size/dtype is reported and rebuilt, never
read. Reads are memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from hst_fast.adapter import backbone_fingerprint
from hst_fast.hst.block_features import BlockFeatures

logger = logging.getLogger(__name__)

MAGIC = b"HSTFEAT1"
STORAGE_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class CacheEntryError(ValueError):
    """A cache file that cannot be used; the message says why (it is then rebuilt)."""


class FeatureCache:
    """Per-sample frozen-ViT features for one model, stored under ``directory``.

    ``cache.block_features(model, sample_ids, images)`` returns what ``model.forward_stage_tokens``
    takes as ``vit_features``: hits are read from disk, misses computed, rounded to the storage
    dtype, written and returned, so a hit and a miss give bit-identical features.
    """

    def __init__(self, directory: str, model, dtype: torch.dtype = torch.float16):
        """directory: cache root (created); model: an HST with backbone_grad='none'; dtype: fp16 | bf16."""
        if getattr(model, "faithful", True):
            raise ValueError("the feature cache needs backbone_grad='none': the faithful model trains inside the ViT")
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache dtype must be one of {list(STORAGE_DTYPES)}, got {dtype}")
        self.dtype = dtype
        self.fingerprint = backbone_fingerprint(model)
        self.root = Path(directory) / self.fingerprint[:32]
        self.root.mkdir(parents=True, exist_ok=True)
        others = [p.name for p in Path(directory).iterdir() if p.is_dir() and p != self.root]
        if others:
            logger.warning(
                "feature cache %s holds features of other backbones (%s); this backbone's are kept apart in %s",
                directory, ", ".join(sorted(others)), self.root.name,
            )
        self.hits = self.misses = 0

    def path(self, sample_id) -> Path:
        """File of one sample; ids that are not plain file names are hashed."""
        name = str(sample_id)
        if not _SAFE_ID.match(name):
            name = hashlib.sha256(name.encode()).hexdigest()
        return self.root / f"{name}.feat"

    def block_features(self, model, sample_ids: Sequence, images: torch.Tensor) -> List[BlockFeatures]:
        """Per-block ``BlockFeatures`` for a batch, from disk where valid, else computed and stored."""
        if len(sample_ids) != images.shape[0]:
            raise ValueError(f"{len(sample_ids)} sample ids for a batch of {images.shape[0]} images")
        model.check_input(images)
        input_size = tuple(images.shape[-2:])
        stored = [self._read(self.path(i), input_size) for i in sample_ids]
        if all(s is not None for s in stored):
            self.hits += len(sample_ids)
            tokens = torch.stack([torch.from_numpy(s) for s in stored]).view(self.dtype)
        else:
            self.misses += sum(s is None for s in stored)
            tokens = self._compute(model, images).to(self.dtype)  # [B, L, 1 + Hv*Wv, D], rounded as stored
            for sample_id, sample_tokens, old in zip(sample_ids, tokens, stored):
                if old is None:
                    self._write(self.path(sample_id), sample_tokens, input_size)
        vit_hw = (input_size[0] // model.patch_size[0], input_size[1] // model.patch_size[1])
        tokens = tokens.to(device=images.device, dtype=images.dtype)
        return [BlockFeatures(t[:, :1], t[:, 1:].unflatten(1, vit_hw)) for t in tokens.unbind(1)]

    @staticmethod
    def _compute(model, images: torch.Tensor) -> torch.Tensor:
        blocks = [torch.cat([meta, patches.flatten(1, 2)], dim=1) for meta, patches in model.trunk(images)]
        return torch.stack(blocks, dim=1)

    def _write(self, path: Path, tokens: torch.Tensor, input_size: Tuple[int, int]) -> None:
        data = tokens.to(self.dtype).contiguous().cpu().view(torch.int16).numpy().tobytes()
        header = json.dumps({
            "input_size": list(input_size), "dtype": STORAGE_DTYPES[self.dtype],
            "shape": list(tokens.shape), "crc32": zlib.crc32(data),
        }).encode()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as handle:
            handle.write(MAGIC + struct.pack("<I", len(header)) + header + data)
        os.replace(tmp, path)

    def _read(self, path: Path, input_size: Tuple[int, int]) -> Optional[np.ndarray]:
        """The sample's int16-viewed tokens, memory-mapped, or None (absent or unusable, reported)."""
        if not path.exists():
            return None
        try:
            return self._validated(path, input_size)
        except CacheEntryError as err:
            logger.warning("feature cache: rebuilding %s: %s", path, err)
            return None

    def _validated(self, path: Path, input_size: Tuple[int, int]) -> np.ndarray:
        with open(path, "rb") as handle:
            prefix = handle.read(len(MAGIC) + 4)
            if len(prefix) < len(MAGIC) + 4 or prefix[: len(MAGIC)] != MAGIC:
                raise CacheEntryError("not a feature-cache file (bad magic or truncated header)")
            header_size = struct.unpack("<I", prefix[len(MAGIC):])[0]
            try:
                header: Dict = json.loads(handle.read(header_size))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CacheEntryError(f"unreadable header ({err})") from err
        if tuple(header.get("input_size", ())) != input_size:
            raise CacheEntryError(f"input size changed from {header.get('input_size')} to {list(input_size)}")
        if header.get("dtype") != STORAGE_DTYPES[self.dtype]:
            raise CacheEntryError(f"dtype changed from {header.get('dtype')} to {STORAGE_DTYPES[self.dtype]}")
        offset = len(MAGIC) + 4 + header_size
        expected_bytes = int(np.prod(header["shape"])) * 2
        if path.stat().st_size != offset + expected_bytes:
            raise CacheEntryError(f"size {path.stat().st_size} bytes, expected {offset + expected_bytes} (partial?)")
        data = np.memmap(path, dtype=np.int16, mode="c", offset=offset, shape=tuple(header["shape"]))
        if zlib.crc32(data) != header["crc32"]:
            raise CacheEntryError("CRC-32 mismatch (corrupted)")
        return data
