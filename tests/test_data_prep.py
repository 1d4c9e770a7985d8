"""mdist prep: documents → shards + manifest; every input document is in a shard or counted as skipped."""
import argparse
import io
import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from mdist.commands import prep as prep_command
from mdist.data.documents import CORRUPT, EMPTY, INVALID_UTF8, TRUNCATED
from mdist.data.prep import ShardLimits, prepare
from mdist.manifests import manifest_path
from mdist.data.synthetic import SyntheticCorpus
from mdist.errors import DataError
from mdist.tokenizer import train_xlmr_tokenizer

REAL_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"


@pytest.fixture(scope="module")
def docs():
    return [f"doc {i} {text}" for i, text in enumerate(SyntheticCorpus().monolingual("en", 60))]


@pytest.fixture(scope="module")
def tokenizer(docs, tmp_path_factory):
    return train_xlmr_tokenizer(docs, 300, tmp_path_factory.mktemp("tok"))


def cc100(docs: list[str]) -> str:
    """CC-100 layout: sentences on their own lines, a blank line after each document."""
    return "".join(doc.replace(" . ", " .\n") + "\n\n" for doc in docs)


def read_shard(path: Path) -> list[dict]:
    return list(wds.tarfile_to_samples()([{"url": str(path)}]))


def test_round_trip_plain_and_xz(tmp_path, docs, tokenizer):
    (tmp_path / "a.txt").write_text(cc100(docs[:25]))
    (tmp_path / "b.txt.xz").write_bytes(lzma.compress(cc100(docs[25:]).encode()))
    manifest = prepare("en", [tmp_path / "a.txt", tmp_path / "b.txt.xz"], tmp_path / "out", ShardLimits(max_documents=7), tokenizer, progress=False)

    samples = [s for shard in manifest["shards"] for s in read_shard(tmp_path / "out" / shard["name"])]
    texts = [s["txt"].decode() for s in samples]
    assert [t.replace(" .\n", " . ") for t in texts] == docs
    for sample, text in zip(samples, texts):
        assert np.load(io.BytesIO(sample["ids.npy"])).tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [s["documents"] for s in manifest["shards"]] == [7] * 8 + [4]
    assert manifest["documents"] == manifest["input_documents"] == len(docs)
    assert manifest["characters"] == sum(map(len, texts))
    assert manifest["tokens"] == sum(s["tokens"] for s in manifest["shards"]) > 0
    assert json.loads(manifest_path(tmp_path / "out", "en").read_text()) == manifest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([s["name"] for s in manifest["shards"]] + ["en.manifest.json"])


def test_bad_input_is_counted_with_reasons(tmp_path, docs):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\n" + b"first doc\nstill first\n\n" + b"ok line\nbroken \xff line\nmore\n\n\n\n" + b"last doc\n")
    full = lzma.compress(cc100(docs).encode())
    cut = tmp_path / "cut.txt.xz"
    cut.write_bytes(full[: len(full) // 2])
    manifest = prepare("xx", [bad, cut], tmp_path / "out", progress=False)

    skipped = manifest["skipped"]
    assert skipped["counts"][INVALID_UTF8] == 1 and skipped["examples"][INVALID_UTF8] == [f"{bad}:6"]
    assert skipped["counts"][EMPTY] == 3  # the blank line opening the file, then two extra separators
    assert skipped["examples"][EMPTY] == [f"{bad}:1", f"{bad}:9", f"{bad}:10"]
    kept = [s["txt"].decode() for shard in manifest["shards"] for s in read_shard(tmp_path / "out" / shard["name"])]
    assert kept[:2] == ["first doc\nstill first", "last doc"]
    from_cut = [t.replace(" .\n", " . ") for t in kept[2:]]
    assert 0 < len(from_cut) < len(docs) and from_cut == docs[: len(from_cut)]
    # the cut falls inside the next document: it is counted once, at its first line
    assert skipped["counts"][TRUNCATED] == 1 and skipped["examples"][TRUNCATED] == [f"{cut}:{_first_line(docs, len(from_cut))}"]
    assert skipped["broken_files"][str(cut)].startswith(TRUNCATED)
    assert manifest["input_documents"] == manifest["documents"] + sum(skipped["counts"].values())
    assert [i["documents"] + i["skipped"] for i in manifest["inputs"]] == [6, len(from_cut) + 1]


def _first_line(docs: list[str], k: int) -> int:
    """1-based line of document k's first line in cc100(docs)."""
    return cc100(docs[:k]).count("\n") + 1


def test_corrupt_xz_stream_is_counted_with_its_reason(tmp_path, docs):
    """A corrupt xz stream (here: its footer, so the decoder fails after the data; more than one read
    buffer of text, so documents come out before the error): the documents before it are kept, the one
    it cuts off is counted as 'corrupt xz stream' at its first line, the file is listed as broken."""
    text = cc100(docs * 3) + "cut off\nby the break\n"  # no closing blank line: a document is open at the end
    data = bytearray(lzma.compress(text.encode()))
    data[-8] ^= 0x55  # the footer's backward size
    broken = tmp_path / "broken.txt.xz"
    broken.write_bytes(bytes(data))
    manifest = prepare("xx", [broken], tmp_path / "out", progress=False)
    skipped = manifest["skipped"]
    kept = [s["txt"].decode().replace(" .\n", " . ") for shard in manifest["shards"] for s in read_shard(tmp_path / "out" / shard["name"])]
    assert 0 < len(kept) and kept == (docs * 3)[: len(kept)]
    assert skipped["counts"] == {CORRUPT: 1} and skipped["examples"][CORRUPT] == [f"{broken}:{_first_line(docs * 3, len(kept))}"]
    assert skipped["broken_files"][str(broken)].startswith(CORRUPT)
    assert manifest["inputs"][0]["documents"] == len(kept) and manifest["inputs"][0]["skipped"] == 1


def test_missing_file_and_existing_shards_are_user_errors(tmp_path, docs):
    (tmp_path / "a.txt").write_text(cc100(docs[:3]))
    with pytest.raises(DataError, match="input file '.*nope.txt' does not exist"):
        prepare("en", [tmp_path / "a.txt", tmp_path / "nope.txt"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    prepare("en", [tmp_path / "a.txt"], tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="--overwrite"):
        prepare("en", [tmp_path / "a.txt"], tmp_path / "out", progress=False)
    assert prepare("en", [tmp_path / "a.txt"], tmp_path / "out", overwrite=True, progress=False)["documents"] == 3
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no documents"):
        prepare("tr", [tmp_path / "blank.txt"], tmp_path / "out", progress=False)


def test_command_reports_and_fails_on_a_broken_file(tmp_path, docs, capsys):
    (tmp_path / "a.txt").write_text(cc100(docs))
    full = lzma.compress(cc100(docs).encode())
    (tmp_path / "cut.txt.xz").write_bytes(full[:-20])
    parser = argparse.ArgumentParser()
    prep_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["prep", "--lang", "en", "--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), "--docs-per-shard", "25", "--no-progress"])
    assert args.run(args) == 0
    assert f"en: {len(docs)} documents" in capsys.readouterr().out
    args = parser.parse_args(["prep", "--lang", "tr", "--input", str(tmp_path / "cut.txt.xz"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert args.run(args) == 1
    assert "truncated xz stream" in capsys.readouterr().out


@pytest.mark.skipif(not REAL_TEXT.is_dir(), reason="shared real text not present")
def test_real_text(tmp_path):
    for lang in ("en", "tr"):
        lines = [line.strip() for path in sorted((REAL_TEXT / lang).glob("*.txt")) for line in path.read_text().splitlines() if line.strip()][:3000]
        (tmp_path / f"{lang}.txt").write_text("".join("\n".join(lines[i : i + 6]) + "\n\n" for i in range(0, len(lines), 6)))
        manifest = prepare(lang, [tmp_path / f"{lang}.txt"], tmp_path / "out", ShardLimits(max_bytes=64 << 10), progress=False)
        assert manifest["documents"] == 500 and manifest["skipped"]["counts"] == {}
        assert manifest["characters"] == sum(len(line) for line in lines) + sum(min(6, len(lines) - i) - 1 for i in range(0, len(lines), 6))
        assert len(manifest["shards"]) > 1 and all(s["bytes"] <= (64 << 10) + (16 << 10) for s in manifest["shards"][:-1])
