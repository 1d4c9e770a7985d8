"""ShardBatchSource: round trip through shards, exact resume, disjoint ranks."""
import copy
import json
import os
import time
from collections import Counter

import pytest
import torch
import webdataset as wds

from mdist.data.masking import MaskingSpec
from mdist.data.prep import ShardLimits, prepare
from mdist.data.shards import ShardBatchSource
from mdist.data.synthetic import SyntheticCorpus
from mdist.errors import DataError
from mdist.tokenizer import train_xlmr_tokenizer

LANGS = ("en", "tr")
SEQ_LEN, BATCH = 24, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Per language 48 numbered documents in 4 pre-tokenised shards (12 each), plus the same text without ids."""
    root = tmp_path_factory.mktemp("corpus")
    synthetic = SyntheticCorpus()
    docs = {lang: [f"{lang} {i} {text}" for i, text in enumerate(synthetic.monolingual(lang, 48, sentences_per_doc=2))] for lang in LANGS}
    tokenizer = train_xlmr_tokenizer([d for lang in LANGS for d in docs[lang]], 300, root / "tok")
    for lang in LANGS:
        (root / f"{lang}.txt").write_text("".join(d + "\n\n" for d in docs[lang]))
        prepare(lang, [root / f"{lang}.txt"], root / "ids", ShardLimits(max_documents=12), tokenizer, progress=False)
        prepare(lang, [root / f"{lang}.txt"], root / "text", ShardLimits(max_documents=12), progress=False)
    return root, docs, tokenizer


def source(corpus, kind="ids", **kwargs):
    root, _, tokenizer = corpus
    settings = dict(seq_len=SEQ_LEN, batch_size=BATCH, masking=MaskingSpec.from_tokenizer(tokenizer, len(tokenizer)), seed=7, num_workers=0, shuffle_block=5)
    return ShardBatchSource.from_dir(root / kind, list(LANGS), tokenizer, **{**settings, **kwargs})


def unmasked(batch) -> torch.Tensor:
    return torch.where(batch.labels_BL != -100, batch.labels_BL, batch.input_ids_BL)


def documents_seen(src, lang: str, want: Counter, sep_id: int) -> list[tuple[int, ...]]:
    """One language's documents in stream order until `want`'s count is reached.

    Rows are <s> chunk </s>; documents are joined by </s> inside chunks, and one that ends exactly at
    a chunk's end is followed by none, so a row end closes a document when it completes one of `want`.
    """
    docs, current = [], []
    while len(docs) < sum(want.values()):
        for row in unmasked(src.next_batches()[lang]).tolist():
            for token in row[1:-1]:
                if token == sep_id:
                    docs.append(tuple(current))
                    current = []
                else:
                    current.append(token)
            if tuple(current) in want:
                docs.append(tuple(current))
                current = []
    return docs[: sum(want.values())]


def tokenised(tokenizer, docs: list[str]) -> Counter:
    return Counter(tuple(ids) for ids in tokenizer(docs, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("kind", ["ids", "text"])
def test_round_trip_every_document_appears(corpus, kind):
    _, docs, tokenizer = corpus
    src = source(corpus, kind)
    assert src.config.pretokenised == {lang: kind == "ids" for lang in LANGS}
    batches = src.next_batches()
    for lang, batch in batches.items():
        assert batch.lang == lang and batch.input_ids_BL.shape == (BATCH, SEQ_LEN) == batch.labels_BL.shape
        assert batch.attention_mask_BL.all() and (batch.labels_BL != -100).any()
    # One epoch of one language = its documents, each once, in a shuffled order.
    want = tokenised(tokenizer, docs["tr"])
    seen = documents_seen(source(corpus, kind), "tr", want, tokenizer.sep_token_id)
    assert Counter(seen) == want
    assert seen != [tuple(ids) for ids in tokenizer(docs["tr"], add_special_tokens=False)["input_ids"]]


def test_resume_continues_exactly(corpus):
    """Stop after 5 steps (odd: mid worker cycle), resume in a fresh source: the next steps are the uninterrupted ones."""
    def take(src, n):
        return [{lang: (b.input_ids_BL, b.labels_BL) for lang, b in src.next_batches().items()} for _ in range(n)]

    first = source(corpus, num_workers=2)
    before = take(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # plain data: any checkpoint format holds it
    after = take(first, 24)  # over an epoch of each worker's shards: crosses blocks, shards and epochs
    resumed = source(corpus, num_workers=2)
    resumed.load_state_dict(copy.deepcopy(state))
    again = take(resumed, 24)
    fresh = take(source(corpus, num_workers=2), 5)
    for want, got in zip(before + after, fresh + again):
        for lang in LANGS:
            assert torch.equal(want[lang][0], got[lang][0]) and torch.equal(want[lang][1], got[lang][1])
    assert state["workers"]["0"]["langs"]["en"]["epoch"] == 0 and first.state_dict()["workers"]["0"]["langs"]["en"]["epoch"] >= 1
    with pytest.raises(DataError, match="workers"):
        source(corpus, num_workers=1).load_state_dict(state)


def test_two_ranks_read_disjoint_shards(corpus):
    _, docs, tokenizer = corpus
    ranks = [source(corpus, rank=rank, world_size=2) for rank in (0, 1)]
    shards = [set(src.config.own_shards("en", 0, 1)) for src in ranks]
    assert len(shards[0]) == len(shards[1]) == 2 and not shards[0] & shards[1]
    want = tokenised(tokenizer, docs["en"])
    seen = [Counter(documents_seen(src, "en", want, tokenizer.sep_token_id)) for src in ranks]  # two epochs of each rank
    assert not seen[0].keys() & seen[1].keys() and seen[0].keys() | seen[1].keys() == want.keys()
    assert set(seen[0].values()) == set(seen[1].values()) == {2}
    with pytest.raises(DataError, match="cannot feed"):
        source(corpus, world_size=2, num_workers=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_leaves_the_global_rng_alone(corpus, workers):
    """A resumed run starts its loader after restoring the RNG: a draw from the global RNG there would
    shift every later dropout mask against the uninterrupted run."""
    src = source(corpus, num_workers=workers)
    before = torch.get_rng_state()
    src.next_batches()
    assert torch.equal(before, torch.get_rng_state())


def test_two_ranks_with_two_workers_each_read_one_shard_each(corpus, tmp_path):
    """2 ranks × 2 DataLoader workers over 4 shards: every (rank, worker) stream reads exactly one shard,
    a different one. Each shard's documents repeat one marker word (its own vocabulary piece), so the
    tokens of every batch name the shard they came from; the worker that made a batch is the one whose
    position moved."""
    _, _, tokenizer = corpus
    pieces = [p for p in tokenizer.convert_ids_to_tokens(range(len(tokenizer))) if p.startswith("▁") and p[1:].isalpha() and len(p) > 2]
    markers = {}
    for piece in pieces:  # four words that tokenise to one piece each
        ids = tokenizer(" ".join([piece[1:]] * 3), add_special_tokens=False)["input_ids"]
        if len(set(ids)) == 1 and len(ids) == 3 and ids[0] not in markers:
            markers[ids[0]] = piece[1:]
        if len(markers) == 4:
            break
    assert len(markers) == 4
    text = "".join(" ".join([word] * 9) + "\n\n" for word in markers.values() for _ in range(3))  # 3 docs per shard
    for lang in LANGS:
        (tmp_path / f"{lang}.txt").write_text(text)
        prepare(lang, [tmp_path / f"{lang}.txt"], tmp_path / "shards", ShardLimits(max_documents=3), tokenizer, progress=False)
    read: dict[tuple[int, int], set[int]] = {}
    for rank in (0, 1):
        src = ShardBatchSource.from_dir(tmp_path / "shards", list(LANGS), tokenizer, seq_len=SEQ_LEN, batch_size=BATCH, seed=7, num_workers=2,
                                        shuffle_block=2, masking=MaskingSpec.from_tokenizer(tokenizer, len(tokenizer)), rank=rank, world_size=2)
        try:
            for _ in range(8):
                before = copy.deepcopy(src.worker_states)
                batches = src.next_batches()
                (worker,) = [w for w, state in src.worker_states.items() if before.get(w) != state]
                ids = set(unmasked(batches["en"]).flatten().tolist()) - set(tokenizer.all_special_ids)
                read.setdefault((rank, worker), set()).update(ids)
        finally:
            src.close()
    assert sorted(read) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(ids) == 1 and ids <= markers.keys() for ids in read.values()), read  # one shard per stream
    assert len(set().union(*read.values())) == 4  # and no two streams share one


# ---- no input never makes the loader wait forever ---------------------------------------------

def write_shard(path, samples: int, text: bytes = b"") -> str:
    """A tar shard of `samples` samples whose documents are all `text`; 0 samples: an empty tar."""
    with open(path, "wb") as f:
        writer = wds.TarWriter(f, encoder=False)
        for i in range(samples):
            writer.write({"__key__": f"{i:09d}", "txt": text})
        writer.close()
    return str(path)


def broken_source(corpus, tmp_path, samples: int, workers: int, **kwargs) -> tuple[ShardBatchSource, list[str]]:
    """en from the corpus; tr's shards (all of them without workers, worker 1's with 2) replaced by
    shards of `samples` empty documents."""
    root, _, tokenizer = corpus
    good = [str(p) for p in sorted((root / "ids").glob("tr-*.tar"))]
    bad = [write_shard(tmp_path / f"tr-bad{i}.tar", samples) for i in range(2)]
    tr = [good[0], bad[0], good[1], bad[1]] if workers else bad
    shards = {"en": sorted((root / "ids").glob("en-*.tar")), "tr": tr}
    src = ShardBatchSource(shards, tokenizer, SEQ_LEN, BATCH, MaskingSpec.from_tokenizer(tokenizer, len(tokenizer)), seed=7,
                           num_workers=workers, shuffle_block=5, pretokenised={"en": True, "tr": False}, **kwargs)
    return src, bad


@pytest.mark.timeout(30)
@pytest.mark.parametrize("workers", [0, 2], ids=["language", "worker"])
@pytest.mark.parametrize("samples, what", [(0, "hold no sample"), (3, "hold no text or ids to train on")], ids=["no_sample", "empty_documents"])
def test_shards_that_yield_nothing_stop_naming_them(corpus, tmp_path, samples, what, workers):
    """A language whose shards hold no sample (or only empty documents) stops the run naming them;
    with 2 workers, the worker whose shards those are stops it (the other worker's batch comes first)."""
    src, bad = broken_source(corpus, tmp_path, samples, workers)
    try:
        with pytest.raises(DataError) as err:
            for _ in range(4):
                src.next_batches()
    finally:
        src.close()
    worker = 1 if workers else 0
    assert f"language 'tr', rank 0, worker {worker}: shard(s) {', '.join(bad)} {what}" in str(err.value)
    assert src.step == (1 if workers else 0)


@pytest.mark.timeout(30)
def test_worker_that_hands_no_batch_stops_naming_it(corpus, tmp_path):
    """Worker 1 blocks opening its shard (a FIFO nobody writes: a hung file system): after
    `worker_timeout_s` the run stops naming the worker and its shards, and no worker outlives it."""
    fifo = tmp_path / "tr-stuck.tar"
    os.mkfifo(fifo)
    root, _, tokenizer = corpus
    good = [str(p) for p in sorted((root / "ids").glob("tr-*.tar"))]
    shards = {"en": sorted((root / "ids").glob("en-*.tar")), "tr": [good[0], str(fifo)]}
    src = ShardBatchSource(shards, tokenizer, SEQ_LEN, BATCH, MaskingSpec.from_tokenizer(tokenizer, len(tokenizer)), seed=7,
                           num_workers=2, shuffle_block=5, pretokenised={"en": True, "tr": True}, worker_timeout_s=3)
    src.next_batches()  # worker 0's
    workers = list(src._items._workers)
    started = time.monotonic()
    try:
        with pytest.raises(DataError, match=rf"rank 0: data loader worker 1 handed no batch within 3 s \(data.worker_timeout_s\); its shards: en: .*en-00000[13].tar.*; tr: {fifo}$"):
            src.next_batches()
        assert time.monotonic() - started < 15
    finally:
        src.close()
    assert not any(process.is_alive() for process in workers)
