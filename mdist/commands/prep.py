"""`mdist prep`: CC-100 text files of one language → webdataset shards and a manifest for the loader."""
from __future__ import annotations

import argparse
from pathlib import Path

from mdist.argtypes import at_least, output_dir


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("prep", help="write webdataset shards of one language from CC-100 text (.txt / .txt.xz)",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--lang", required=True, help="language code; names the shards (xx-000000.tar) and the manifest")
    parser.add_argument("--input", required=True, nargs="+", type=Path, help="text files, documents separated by blank lines")
    parser.add_argument("--out", required=True, type=output_dir, help="shard directory (one per corpus; all languages may share it)")
    parser.add_argument("--shard-size-mb", type=at_least(0, float, strict=True, high=2**20), default=256, help="close a shard at this size")
    parser.add_argument("--docs-per-shard", type=at_least(1), default=None, help="also close a shard at this many documents")
    parser.add_argument("--tokenizer", type=Path, default=None, help="teacher directory: also store its token ids (ids.npy), so loaders skip tokenising")
    parser.add_argument("--overwrite", action="store_true", help="replace this language's existing shards in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    from mdist.data.prep import ShardLimits, prepare
    from mdist.teacher import load_teacher_tokenizer

    tokenizer = load_teacher_tokenizer(args.tokenizer) if args.tokenizer is not None else None
    limits = ShardLimits(int(args.shard_size_mb * 2**20), args.docs_per_shard)
    manifest = prepare(args.lang, args.input, args.out, limits, tokenizer, args.overwrite, progress=not args.no_progress)
    skipped = manifest["skipped"]
    print(f"{args.lang}: {manifest['documents']} documents, {manifest['characters']} characters"
          + (f", {manifest['tokens']} tokens" if manifest["tokens"] is not None else "")
          + f" in {len(manifest['shards'])} shard(s) under {args.out}")
    for reason, count in skipped["counts"].items():
        print(f"  skipped {count} × {reason}, e.g. {', '.join(skipped['examples'][reason][:3])}")
    for path, why in skipped["broken_files"].items():
        print(f"  warning: {path}: {why}; what followed is lost")
    return 1 if skipped["broken_files"] else 0
