"""What `mdist finetune` says rather than getting silently wrong: a diverged run, inputs cut to the
length limit (counted, warned about, the limit recorded), the task's shortest useful length.

A 2-layer baseline of the tiny teacher (position limit 64 tokens) on small synthetic task files.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from mdist.baseline import export_baseline
from mdist.cli import main
from mdist.transfer.tasks import NER, XCOPA, XNLI, ChoiceExample, PairExample, TaggedSentence
from mdist.transfer.tasks.base import TOKENIZER_LOG

LIMIT = 64  # the tiny teacher's 66 positions less XLM-R's 2 offset


@pytest.fixture(scope="module")
def model_dir(tiny_teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "m"
    export_baseline(tiny_teacher_dir, 2, "bottom", out)
    return out


@pytest.fixture(scope="module")
def words(synthetic_docs):
    return [w for doc in synthetic_docs["en"][:10] for w in doc.split() if w != "."]


def _pairs(words, n: int, long: int, seed: int) -> list[tuple[str, str, str]]:
    """`n` premise/hypothesis/label rows; the first `long` have a premise of 80 words (beyond any 64-token limit)."""
    rng = random.Random(seed)
    return [(" ".join(rng.choices(words, k=80 if i < long else 4)), " ".join(rng.choices(words, k=3)), ("entailment", "neutral", "contradiction")[i % 3])
            for i in range(n)]


def _tsv(path, rows) -> str:
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _finetune(model, tmp_path, train, evaluation, *extra) -> int:
    return main(["finetune", "--task", "xnli", "--strategy", "full-trg", "--model", str(model), "--trg", "tr", "--train", train, "--eval", evaluation,
                 "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "8", *extra])


def test_cuts_are_counted_warned_and_the_applied_limit_recorded(model_dir, words, tmp_path, capfd, caplog):
    """20 training pairs, 4 too long (20 %: warned); 10 evaluation pairs, none too long (silent); the 5
    shots, 2 too long (warned); every count checked against the tokenizer's own lengths."""
    train, evaluation, shots = _pairs(words, 20, 4, 0), _pairs(words, 10, 0, 1), _pairs(words, 5, 2, 2)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    too_long = [sum(len(tokenizer(p, h)["input_ids"]) > LIMIT for p, h, _ in rows) for rows in (train, evaluation, shots)]
    assert too_long == [4, 0, 2]
    capfd.readouterr()
    caplog.clear()
    code = _finetune(model_dir, tmp_path, _tsv(tmp_path / "train.tsv", train), _tsv(tmp_path / "eval.tsv", evaluation),
                     "--shots", "5", "--shots-file", _tsv(tmp_path / "shots.tsv", shots), "--few-shot-epochs", "2", "--few-shot-batch-size", "2")
    err = capfd.readouterr().err
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["settings"]["max_length"] == LIMIT  # --max-length 128 asked, the model's 64 applied
    assert result["truncated"] == {"train": {"cut": 4, "of": 20}, "eval": {"cut": 0, "of": 10}, "few_shot": {"5": {"cut": 2, "of": 5}}}
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 4 of 20 xnli train examples (20.0%) were cut to {LIMIT} tokens",
                        f"warning: 2 of 5 xnli 5-shot examples (40.0%) were cut to {LIMIT} tokens"]
    assert not [r for r in caplog.records if "Token indices sequence length" in r.getMessage()]  # mdist cuts the rows itself
    few = result["few_shot"]["5"]["fit"]  # the few-shot run's losses are kept: 2 epochs of 3 batches
    assert few["steps"] == 2 * 3 and math.isfinite(few["loss"]) and few["loss"] > 0


def test_a_diverged_run_stops_with_one_line_and_writes_no_result(model_dir, words, tmp_path, capfd):
    broken = tmp_path / "nan-model"
    export_baseline(model_dir, 2, "bottom", broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("embeddings.LayerNorm.weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    rows = _pairs(words, 8, 0, 3)
    code = _finetune(broken, tmp_path, _tsv(tmp_path / "t.tsv", rows), _tsv(tmp_path / "e.tsv", rows))
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mdist finetune: error: ")]
    assert code == 2 and "Traceback" not in err and errors == ["mdist finetune: error: step 1: xnli full-trg: loss term 'loss' is not finite (loss=nan)"], errors
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.parametrize("task, example, special", [
    (XNLI(), PairExample("a b c " * 30, "d e f " * 30, 0), 4),
    (NER(), TaggedSentence(("a",) * 90, ("O",) * 90), 2),
    (XCOPA(), ChoiceExample("a b c " * 30, "d e f " * 30, ("g h " * 30, "i"), 0), 6),
])
def test_the_shortest_length_leaves_every_row_text(model_dir, task, example, special):
    """At `min_length` every row keeps its special tokens and one token of text, and says it was cut;
    at exactly the length of its longest whole row it says not, one token less it says so."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert task.special_tokens == special and task.min_length == special + 1
    feature = task.encode([example], tokenizer, task.min_length)[0]
    rows = feature["input_ids"] if task.head == "choice" else [feature["input_ids"]]
    specials = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    assert feature["truncated"] and all(len(row) == task.min_length and sum(t not in specials for t in row) == 1 for row in rows)
    whole = task.encode([example], tokenizer, 4096)[0]
    longest = max(map(len, whole["input_ids"] if task.head == "choice" else [whole["input_ids"]]))
    assert not whole["truncated"] and not task.encode([example], tokenizer, longest)[0]["truncated"]
    assert task.encode([example], tokenizer, longest - 1)[0]["truncated"]


def test_only_the_whole_text_warning_is_silenced_and_only_while_mdist_cuts(model_dir, caplog):
    long = ChoiceExample("a b c " * 40, "q", ("x", "y"), 0)

    def warned() -> bool:
        return any("Token indices sequence length is longer" in r.getMessage() for r in caplog.records)

    XCOPA().encode([long], AutoTokenizer.from_pretrained(str(model_dir)), LIMIT)
    assert not warned() and not TOKENIZER_LOG.filters
    AutoTokenizer.from_pretrained(str(model_dir))(long.context)  # outside mdist's cutting the library still warns (once per tokenizer)
    assert warned()


@pytest.mark.parametrize("command", ["finetune", "baseline", "transfer-table"])
def test_help_says_each_default_once(command):
    """Every option's help block names its default exactly once when it has one (in words or as
    `(default: X)`), and never a `(default: None)` / `(default: False)` that tells nothing."""
    from mdist.cli import build_parser

    parser = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    blocks = {block.split()[0].rstrip(","): " ".join(block.split()) for block in re.split(r"\n  (?=-)", parser.format_help())[1:]}
    for action in parser._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        block = blocks[action.option_strings[0]]
        in_words = "default" in (action.help or "")
        assert block.count("default") == (in_words or (action.default not in (None, False, []) and not action.required)), block
        if not in_words and "default" in block:
            assert f"(default: {action.default})" in block, block
