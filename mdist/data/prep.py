"""CC-100 text → webdataset tar shards `xx-000000.tar …` and a manifest `xx.manifest.json` (`mdist prep`).

Each sample is one document: `txt` (UTF-8) and, given the teacher's tokenizer, `ids.npy` (int32 ids
without special tokens) so that loader workers need not tokenise. A shard is written under a hidden
temporary name and renamed once complete, so a shard name on disk always means a whole shard; the
manifest is written last, the same way, and is what the loader reads.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from mdist.data.documents import SkipLog, read_documents
from mdist.data.encoding import DocumentEncoder
from mdist.errors import DataError, path_problem
from mdist.manifests import manifest_path

MANIFEST_FORMAT = 1
ENCODE_BATCH = 512  # documents per tokeniser call


@dataclass(frozen=True)
class ShardLimits:
    """A shard is closed when it reaches either limit (bytes on disk, documents)."""

    max_bytes: int = 256 << 20
    max_documents: int | None = None

    def __post_init__(self):
        if self.max_bytes <= 0 or (self.max_documents is not None and self.max_documents <= 0):
            raise DataError(f"shard limits must be positive, got {self}")


class ShardWriter:
    """Rotating, atomically renamed tar shards with per-shard counts."""

    def __init__(self, out_dir: Path, lang: str, limits: ShardLimits):
        self.out_dir, self.lang, self.limits = out_dir, lang, limits
        self.shards: list[dict] = []
        self._file = self._tar = None

    def add(self, text: str, ids: list[int] | None) -> None:
        if self._tar is None:
            self._open()
        shard = self.shards[-1]
        sample = {"__key__": f"{shard['documents']:09d}", "txt": text.encode("utf-8")}
        if ids is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(ids, dtype=np.int32))
            sample["ids.npy"] = buffer.getvalue()
            shard["tokens"] += len(ids)
        self._tar.write(sample)
        shard["documents"] += 1
        shard["characters"] += len(text)
        if self._file.tell() >= self.limits.max_bytes or shard["documents"] == self.limits.max_documents:
            self._close()

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._close()
        return self.shards

    def _open(self) -> None:
        name = f"{self.lang}-{len(self.shards):06d}.tar"
        self.shards.append({"name": name, "documents": 0, "characters": 0, "tokens": 0, "bytes": 0})
        self._file = open(self.out_dir / f".{name}.tmp", "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0, format=tarfile.USTAR_FORMAT)  # no per-member pax headers: 2× faster

    def _close(self) -> None:
        shard = self.shards[-1]
        self._tar.close()
        shard["bytes"] = self._file.tell()
        self._file.close()
        os.replace(self.out_dir / f".{shard['name']}.tmp", self.out_dir / shard["name"])
        self._file = self._tar = None


def prepare(lang: str, inputs: list[Path], out_dir: Path, limits: ShardLimits = ShardLimits(), tokenizer=None, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the shards and manifest of one language; return the manifest."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", lang):
        raise DataError(f"language code '{lang}' must be letters, digits or _ (it names the shard files)")
    inputs = [Path(p) for p in inputs]
    for path in inputs:
        problem = path_problem(path, want_dir=False)
        if problem:
            raise DataError(f"input file '{path}' {problem}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(out_dir, lang, overwrite)
    encoder = DocumentEncoder(tokenizer, threads=os.cpu_count() or 1) if tokenizer is not None else None
    writer, skips, per_input = ShardWriter(out_dir, lang, limits), SkipLog(), []
    with tqdm(total=sum(p.stat().st_size for p in inputs), unit="B", unit_scale=True, desc=f"prep {lang}", disable=not progress) as bar:
        for path in inputs:
            skipped_before, written = skips.total, 0
            texts: list[str] = []
            for doc in read_documents(path, skips, bar.update):
                texts.append(doc.text)
                if len(texts) == ENCODE_BATCH:
                    written += _write(writer, texts, encoder)
                    texts = []
            written += _write(writer, texts, encoder)
            per_input.append({"path": str(path), "documents": written, "skipped": skips.total - skipped_before, "broken": skips.broken_files.get(str(path))})
    shards = writer.close()
    documents = sum(s["documents"] for s in shards)
    if documents == 0:
        raise DataError(f"language '{lang}': no documents in {', '.join(map(str, inputs))} (skipped: {dict(skips.counts) or 'none'})")
    manifest = {
        "format": MANIFEST_FORMAT,
        "lang": lang,
        "tokenizer": encoder.fingerprint if encoder else None,
        "documents": documents,
        "characters": sum(s["characters"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards) if encoder else None,
        "input_documents": documents + skips.total,
        "skipped": skips.to_dict(),
        "inputs": per_input,
        "shards": [{**s, "tokens": s["tokens"] if encoder else None} for s in shards],
    }
    tmp = out_dir / f".{lang}.manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    os.replace(tmp, manifest_path(out_dir, lang))
    return manifest


def _write(writer: ShardWriter, texts: list[str], encoder: DocumentEncoder | None) -> int:
    ids = encoder(texts) if encoder is not None and texts else [None] * len(texts)
    for text, doc_ids in zip(texts, ids):
        writer.add(text, doc_ids)
    return len(texts)


def _clear_previous(out_dir: Path, lang: str, overwrite: bool) -> None:
    """Shards of an earlier run would mix with the new ones; remove them only when asked."""
    previous = [p for p in out_dir.iterdir() if re.fullmatch(rf"\.?{lang}(-\d{{6}}\.tar|\.manifest\.json)(\.tmp)?", p.name)]
    if previous and not overwrite:
        raise DataError(f"{out_dir}: already holds shards or a manifest for '{lang}'; pass --overwrite to replace them")
    for path in previous:
        path.unlink()
