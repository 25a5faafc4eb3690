"""On-disk cache of frozen-ViT features (``backbone_grad='none'``, deterministic input pipelines).

With a frozen ViT and a deterministic pipeline (VTAB-1k's resize-only one), every epoch feeds the
side network the same ViT features; the cache stores them once and later epochs skip the ViT.

Layout: ``<directory>/<key>/<H>x<W>-<dtype>/<sample id>.feat``, one file per sample holding every
block's class token and patch tokens ``[L, 1 + Hv*Wv, D]`` in fp16/bf16, behind a JSON header (input
size, dtype, shape, CRC-32 of the data). ``key`` hashes the backbone fingerprint and ``input_key``
(what else shapes the ViT's input, e.g. the normalization), so the full key is sample id + backbone +
input normalization + input size + dtype: a change of any of them reads other files, never stale ones.
Files are written to a temporary name unique to the writer (process, thread, host) and renamed, so two
processes writing one sample at once leave one whole file; a file that is partial, corrupted or whose
header disagrees is reported and rebuilt, never read. Reads are memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import uuid
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


def feature_nbytes(depth: int, num_tokens: int, dim: int, dtype: torch.dtype = torch.float16) -> int:
    """Bytes of one sample's features (file header excluded): ``depth`` blocks x ``num_tokens`` x ``dim``."""
    return depth * num_tokens * dim * torch.empty((), dtype=dtype).element_size()


class FeatureCache:
    """Per-sample frozen-ViT features for one model, stored under ``directory``.

    ``cache.block_features(model, sample_ids, images)`` returns what ``model.forward_stage_tokens``
    takes as ``vit_features``: hits are read from disk, misses computed (the ViT runs on the missing
    samples only), rounded to the storage dtype, written and returned, so a hit and a miss give
    bit-identical features. ``hits`` / ``misses`` count samples.
    """

    def __init__(self, directory: str, model, dtype: torch.dtype = torch.float16, input_key: str = ""):
        """directory: cache root (created); model: an HST with backbone_grad='none'; dtype: fp16 | bf16;
        input_key: whatever else determines the ViT's input for a sample id (e.g. the data preprocessor's
        mean/std), part of the key."""
        if getattr(model, "faithful", True):
            raise ValueError("the feature cache needs backbone_grad='none': the faithful model trains inside the ViT")
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache dtype must be one of {list(STORAGE_DTYPES)}, got {dtype}")
        self.dtype = dtype
        self.fingerprint = backbone_fingerprint(model)
        key = hashlib.sha256(f"{self.fingerprint}\n{input_key}".encode()).hexdigest()[:32]
        self.root = Path(directory) / key
        self.root.mkdir(parents=True, exist_ok=True)
        others = [p.name for p in Path(directory).iterdir() if p.is_dir() and p != self.root]
        if others:
            logger.warning(
                "feature cache %s holds features of other backbones or input normalizations (%s); "
                "this model's are kept apart in %s", directory, ", ".join(sorted(others)), self.root.name,
            )
        self.hits = self.misses = 0

    def folder(self, input_size: Tuple[int, int]) -> Path:
        """Folder of this model's entries for one input size and the storage dtype."""
        return self.root / f"{input_size[0]}x{input_size[1]}-{STORAGE_DTYPES[self.dtype]}"

    def path(self, sample_id, input_size: Tuple[int, int]) -> Path:
        """File of one sample; ids that are not plain file names are hashed."""
        name = str(sample_id)
        if not _SAFE_ID.match(name):
            name = hashlib.sha256(name.encode()).hexdigest()
        return self.folder(input_size) / f"{name}.feat"

    def usage(self) -> Tuple[int, int]:
        """(entries, bytes on disk) of this model's cache, every input size and dtype included."""
        sizes = [p.stat().st_size for p in self.root.glob("*/*.feat")]
        return len(sizes), sum(sizes)

    @staticmethod
    def entry_shape(model, input_size: Tuple[int, int]) -> Tuple[int, int, int]:
        """(L, 1 + Hv*Wv, D): the shape of one sample's features for ``model`` at ``input_size``."""
        return len(model.vit.blocks), 1 + int(np.prod(model.vit_grid(input_size))), model.vit.embed_dim

    def block_features(self, model, sample_ids: Sequence, images: torch.Tensor) -> List[BlockFeatures]:
        """Per-block ``BlockFeatures`` for a batch [B, 3, H, W], from disk where valid, else computed and stored."""
        if len(sample_ids) != images.shape[0]:
            raise ValueError(f"{len(sample_ids)} sample ids for a batch of {images.shape[0]} images")
        model.check_input(images)
        input_size = tuple(images.shape[-2:])
        stored = [self._read(self.path(i, input_size), input_size) for i in sample_ids]
        missing = [row for row, tokens in enumerate(stored) if tokens is None]
        self.hits += len(stored) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = self._compute(model, images[missing]).to(device="cpu", dtype=self.dtype)  # rounded as stored
            for row, tokens in zip(missing, computed):
                self._write(self.path(sample_ids[row], input_size), tokens, input_size)
                stored[row] = tokens
        tokens = torch.stack(stored).to(device=images.device, dtype=images.dtype)  # [B, L, 1 + Hv*Wv, D]
        vit_hw = model.vit_grid(input_size)
        return [BlockFeatures(t[:, :1], t[:, 1:].unflatten(1, vit_hw)) for t in tokens.unbind(1)]

    @staticmethod
    def _compute(model, images: torch.Tensor) -> torch.Tensor:
        """[M, 3, H, W] -> [M, L, 1 + Hv*Wv, D], the ViT's per-block class and patch tokens."""
        blocks = [torch.cat([meta, patches.flatten(1, 2)], dim=1) for meta, patches in model.trunk(images)]
        return torch.stack(blocks, dim=1)

    def _write(self, path: Path, tokens: torch.Tensor, input_size: Tuple[int, int]) -> None:
        data = tokens.contiguous().view(torch.int16).numpy().tobytes()
        header = json.dumps({
            "input_size": list(input_size), "dtype": STORAGE_DTYPES[self.dtype],
            "shape": list(tokens.shape), "crc32": zlib.crc32(data),
        }).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer: no two share it
        try:
            with open(tmp, "xb") as handle:
                handle.write(MAGIC + struct.pack("<I", len(header)) + header + data)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self, path: Path, input_size: Tuple[int, int]) -> Optional[torch.Tensor]:
        """The sample's tokens [L, 1 + Hv*Wv, D] in the storage dtype, memory-mapped, or None (absent or
        unusable, reported)."""
        if not path.exists():
            return None
        try:
            return torch.from_numpy(self._validated(path, input_size)).view(self.dtype)
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
