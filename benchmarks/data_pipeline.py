"""Input-pipeline benchmark: tokens/s of ShardBatchSource (read shards → ids → pack → mask → batches).

Corpus: the shared real text (`../shared/data/text/*/*.txt`, 8 lines per document, repeated to
--mb megabytes) or, where absent, the synthetic corpus; a real sentencepiece tokenizer of --vocab
pieces is trained on it in-process. `mdist prep` writes it twice, with and without pre-tokenised ids.
Each row: one source (2 languages, batch 32 × 512 per language per step) with 0 (in-process), 1, 2
and 4 DataLoader workers; tokens/s per worker divides by max(workers, 1). Target: 150 000 tokens/s
per worker. Prints a table and appends it to benchmarks/RESULTS.md.

    python benchmarks/data_pipeline.py [--mb 24] [--vocab 32000] [--seconds 6] [--no-record]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mdist.data.masking import MaskingSpec
from mdist.data.prep import ShardLimits, prepare
from mdist.data.shards import ShardBatchSource
from mdist.data.synthetic import SyntheticCorpus
from mdist.tokenizer import train_xlmr_tokenizer
from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

ROOT = Path(__file__).resolve().parents[1]
REAL_TEXT = ROOT.parent / "shared" / "data" / "text"
LANGS = ("en", "tr")
SEQ_LEN, BATCH = 512, 32
HEADER = ("date (UTC)", "device", "commit", "ids from", "workers", "tokens/s", "tokens/s per worker", "target 150k/worker")


def corpus_lines(lang: str) -> list[str]:
    files = sorted((REAL_TEXT / lang).glob("*.txt"))
    if files:
        return [line.strip() for path in files for line in path.read_text().splitlines() if line.strip()]
    return SyntheticCorpus().monolingual(lang, 20_000, sentences_per_doc=1)


def write_corpus(lines: list[str], path: Path, megabytes: float) -> None:
    """Documents of 8 lines, the whole text repeated until the file holds `megabytes`."""
    block = "".join("\n".join(lines[i : i + 8]) + "\n\n" for i in range(0, len(lines), 8)).encode()
    with open(path, "wb") as f:
        for _ in range(max(1, round(megabytes * 2**20 / len(block)))):
            f.write(block)


def measure(shard_dir: Path, tokenizer, workers: int, seconds: float) -> float:
    masking = MaskingSpec.from_tokenizer(tokenizer, len(tokenizer))
    source = ShardBatchSource.from_dir(shard_dir, list(LANGS), tokenizer, seq_len=SEQ_LEN, batch_size=BATCH, masking=masking, seed=0, num_workers=workers)
    for _ in range(2 * max(workers, 1)):  # start the workers and fill their prefetch queues
        source.next_batches()
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += sum(batch.tokens for batch in source.next_batches().values())
    rate = tokens / (time.perf_counter() - start)
    source.close()
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=24, help="megabytes of text per language")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seconds", type=float, default=6, help="timed seconds per row")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = {lang: corpus_lines(lang) for lang in LANGS}
        started = time.perf_counter()
        tokenizer = train_xlmr_tokenizer([line for lang in LANGS for line in lines[lang]], args.vocab, tmp / "tok")
        print(f"tokenizer: {len(tokenizer)} pieces in {time.perf_counter() - started:.0f} s")
        for lang in LANGS:
            write_corpus(lines[lang], tmp / f"{lang}.txt", args.mb)
            limits = ShardLimits(max_bytes=int(args.mb * 2**20 / 8))  # ≥ 8 shards: enough for 4 workers
            for kind, tok in (("ids.npy", tokenizer), ("text", None)):
                started = time.perf_counter()
                manifest = prepare(lang, [tmp / f"{lang}.txt"], tmp / kind, limits, tok, progress=False)
                print(f"prep {lang} ({kind}): {manifest['documents']} documents, {len(manifest['shards'])} shards, "
                      f"{args.mb / (time.perf_counter() - started):.1f} MB/s")
        device = device_name("cpu")  # the pipeline runs on the CPU even on a GPU machine
        revision, stamp = git_commit(), utc_stamp()  # once: other work may commit while the rows run
        rows = []
        print(markdown_header(HEADER))
        for kind in ("ids.npy", "text"):
            for workers in args.workers:
                rate = measure(tmp / kind, tokenizer, workers, args.seconds)
                per = rate / max(workers, 1)
                row = [stamp, device, revision, kind, workers, f"{rate:,.0f}", f"{per:,.0f}", "met" if per >= 150_000 else "short"]
                print(markdown_row(row), flush=True)
                rows.append(row)
    if not args.no_record:
        append_table(f"Data pipeline (benchmarks/data_pipeline.py), {stamp}, {len(tokenizer)}-piece tokenizer, 2 languages × {BATCH}×{SEQ_LEN} per step", HEADER, rows)


if __name__ == "__main__":
    main()
