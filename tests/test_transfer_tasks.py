"""Downstream task readers, encodings, batching, predictions and metrics, on the real shared data where present."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from mdist.errors import ConfigError
from mdist.errors import DataError
from mdist.transfer import TASK_NAMES
from mdist.transfer.tasks import NER, TASKS, XCOPA, XNLI, ChoiceExample, PairExample, TaggedSentence, get_task
from mdist.transfer.tasks.base import IGNORE

def data_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent")
    return path


def lines_of(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A real XLM-R tokenizer (fast, with word_ids) trained in-process on English and Turkish task text."""
    from transformers import AutoTokenizer

    from mdist.tokenizer import train_xlmr_tokenizer

    sources = [data_file(f"xnli/dev-{lang}.tsv") for lang in ("en", "tr")] + [data_file(f"panx/dev-{lang}.tsv") for lang in ("en", "tr")]
    sources += [data_file("siqa/dev.jsonl"), data_file("xcopa/tr/val.tr.jsonl"), data_file("xcopa/train-en.jsonl")]
    sentences = [line for path in sources for line in itertools.islice(lines_of(path), 600)]
    out = tmp_path_factory.mktemp("task-tokenizer")
    train_xlmr_tokenizer(sentences, vocab_size=1000, out_dir=out, model_max_length=510)
    return AutoTokenizer.from_pretrained(str(out))


# ---- task table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, head, metric, epochs, ks, num_labels",
    [("xnli", "sequence", "accuracy", 10, (10, 100, 500), 3), ("ner", "token", "f1", 20, (10, 100, 500), 7), ("xcopa", "choice", "accuracy", 20, (10, 50, 100), 1)],
)
def test_task_table(name, head, metric, epochs, ks, num_labels):
    task = get_task(name)
    assert (task.name, task.head, task.metric, task.zero_shot_epochs, task.few_shot_ks, task.num_labels, task.max_length) == (name, head, metric, epochs, ks, num_labels, 128)
    assert TASKS[name] is task


def test_the_light_task_names_are_the_registry_s_in_order():
    """`mdist finetune --task` offers TASK_NAMES without loading torch; the tables follow TASKS' order."""
    assert tuple(TASKS) == TASK_NAMES


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown task 'pos' \(known: xnli, ner, xcopa\)"):
        get_task("pos")


# ---- readers on the real files ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["dev-en", "dev-tr", "test-en", "test-tr"])
def test_xnli_reader(name):
    path = data_file(f"xnli/{name}.tsv")
    lines = lines_of(path)
    examples = XNLI().read(path)
    premise, hypothesis, label = lines[0].split("\t")
    assert len(examples) == len(lines)
    assert examples[0] == PairExample(premise, hypothesis, XNLI.label_names.index(label))
    assert {e.label for e in examples} == {0, 1, 2}


@pytest.mark.parametrize("name", ["train-en", "dev-en", "test-en", "train-tr", "dev-tr", "test-tr"])
def test_ner_reader(name):
    path = data_file(f"panx/{name}.tsv")
    blocks = [b for b in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if b.strip()]
    examples = NER().read(path)
    first = [line.split("\t") for line in blocks[0].splitlines()]
    assert len(examples) == len(blocks)
    assert examples[0] == TaggedSentence(tuple(w for w, _ in first), tuple(t for _, t in first))
    assert {t for e in examples for t in e.tags} == set(NER.label_names)
    assert all(len(e.words) == len(e.tags) > 0 for e in examples)


@pytest.mark.parametrize("name", ["dev", "train"])
def test_siqa_reader_finds_its_labels_file(name):
    path = data_file(f"siqa/{name}.jsonl")
    labels = lines_of(data_file(f"siqa/{name}-labels.lst"))
    records = lines_of(path)
    examples = XCOPA().read(path)
    first = json.loads(records[0])
    assert len(examples) == len(records) == len(labels)
    assert examples[0] == ChoiceExample(first["context"], first["question"], (first["answerA"], first["answerB"], first["answerC"]), int(labels[0]) - 1)
    assert {e.label for e in examples} == {0, 1, 2}


@pytest.mark.parametrize("name", ["tr/val.tr", "tr/test.tr", "train-en", "val-en", "test-en"])
def test_copa_reader(name):
    path = data_file(f"xcopa/{name}.jsonl")
    records = [json.loads(line) for line in lines_of(path)]
    examples = XCOPA().read(path)
    first = records[0]
    question = {"cause": "What was the cause?", "effect": "What happened as a result?"}[first["question"]]
    assert len(examples) == len(records)
    assert examples[0] == ChoiceExample(first["premise"], question, (first["choice1"], first["choice2"]), first["label"])
    assert {e.label for e in examples} == {0, 1}


def test_copa_questions_rendered_alike_for_english_train_and_turkish_eval():
    rendered = {}
    for name in ("train-en", "tr/test.tr"):
        path = data_file(f"xcopa/{name}.jsonl")
        raw = [json.loads(line)["question"] for line in lines_of(path)]
        rendered[name] = {(q, e.question) for q, e in zip(raw, XCOPA().read(path))}
    assert rendered["train-en"] == rendered["tr/test.tr"] == {("cause", "What was the cause?"), ("effect", "What happened as a result?")}


def test_xnli_reads_xtreme_contradictory(tmp_path):
    path = tmp_path / "xtreme.tsv"
    path.write_text("a\tb\tcontradictory\n", encoding="utf-8")
    assert XNLI().read(path) == [PairExample("a", "b", 2)]


@pytest.mark.parametrize("task, content", [("xnli", "a\tb\tneutral\n"), ("ner", "Ali\tB-PER\n"), ("xcopa", '{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0}\n')])
def test_files_with_their_own_labels_refuse_a_labels_file(tmp_path, task, content):
    (tmp_path / "data").write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="carry their own labels"):
        get_task(task).read(tmp_path / "data", labels_path=tmp_path / "labels.lst")


# ---- bad inputs -------------------------------------------------------------------------------

BAD_INPUTS = [
    # task, files (the first is read), fragments the one-line message must contain ({d}: the folder)
    ("xnli", {"bad.tsv": b"a\tb\tneutral\na\tb\n"}, ["{d}/bad.tsv:2:", "expected 3 tab-separated columns", "found 2"]),
    ("xnli", {"bad.tsv": b"a\tb\tmaybe\n"}, ["{d}/bad.tsv:1:", "unknown label 'maybe'", "entailment, neutral, contradiction"]),
    ("xnli", {"bad.tsv": b""}, ["{d}/bad.tsv: no examples"]),
    ("xnli", {"bad.tsv": b"a\tb\tneutral\n\xff\tb\tneutral\n"}, ["{d}/bad.tsv:2:", "invalid UTF-8"]),
    ("ner", {"bad.tsv": b"Ali\tB-PER\nist O\n"}, ["{d}/bad.tsv:2:", "expected 2 tab-separated columns", "found 1"]),
    ("ner", {"bad.tsv": b"Ali\tB-PER\n\nx\tB-MISC\n"}, ["{d}/bad.tsv:3:", "unknown tag 'B-MISC'", "I-LOC"]),
    ("ner", {"bad.tsv": b"\n\n"}, ["{d}/bad.tsv: no examples"]),
    ("xcopa", {"bad.jsonl": b'{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0}\n{oops\n'}, ["{d}/bad.jsonl:2:", "bad JSON"]),
    ("xcopa", {"bad.jsonl": b'{"premise": "p", "choice1": "a", "question": "cause", "label": 0}\n'}, ["{d}/bad.jsonl:1:", "missing key(s) choice2"]),
    ("xcopa", {"bad.jsonl": b'{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 2}\n'}, ["{d}/bad.jsonl:1:", "label must be 0 or 1, found 2"]),
    ("xcopa", {"bad.jsonl": b'{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0}\n'}, ["{d}/bad.jsonl:1:", "unknown question 'why'"]),
    ("xcopa", {"bad.jsonl": b"[1, 2]\n"}, ["{d}/bad.jsonl:1:", "expected a JSON object"]),
    ("xcopa", {"bad.jsonl": b"\n"}, ["{d}/bad.jsonl: no examples"]),
    (
        "xcopa",
        {"bad.jsonl": b'{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c"}\n' * 2, "bad-labels.lst": b"1\n"},
        ["{d}/bad-labels.lst: 1 labels for 2 records in {d}/bad.jsonl"],
    ),
    (
        "xcopa",
        {"bad.jsonl": b'{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c"}\n', "bad-labels.lst": b"4\n"},
        ["{d}/bad-labels.lst:1:", "label must be 1, 2 or 3, found '4'"],
    ),
]


@pytest.mark.parametrize("task, files, fragments", BAD_INPUTS, ids=[f"{t}-{f[-1]}" for t, _, f in BAD_INPUTS])
def test_bad_inputs_name_file_and_line(tmp_path, task, files, fragments):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as raised:
        get_task(task).read(tmp_path / next(iter(files)))
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment.format(d=tmp_path) in message


@pytest.mark.parametrize("task, name", [("xnli", "none.tsv"), ("ner", "none.tsv"), ("xcopa", "none.jsonl")])
def test_missing_file(tmp_path, task, name):
    with pytest.raises(FileNotFoundError, match=re.escape(f"'{tmp_path / name}' does not exist")):
        get_task(task).read(tmp_path / name)


def test_siqa_without_labels_file(tmp_path):
    (tmp_path / "dev.jsonl").write_text('{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c"}\n', encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="dev-labels.lst"):
        XCOPA().read(tmp_path / "dev.jsonl")


SIQA_RECORD = '{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c"}'
CLEAN_FILES = {  # task: (data file, labels file or None), LF line ends, nothing trailing
    "xnli": (["p one\th one\tneutral", "p two\th two\tcontradiction"], None),
    "ner": (["Ali\tB-PER", "geldi\tO", "", "Ankara\tB-LOC"], None),
    "copa": (['{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 1}'], None),
    "siqa": ([SIQA_RECORD, SIQA_RECORD], ["2", "3"]),
}


def _write(path: Path, lines: list[str], bom: bool, end: str, trailing: str) -> Path:
    path.write_bytes(("\ufeff" if bom else "").encode() + "".join(f"{line}{trailing if line else ''}{end}" for line in lines).encode())
    return path


@pytest.mark.parametrize("bom, end, trailing", [(True, "\n", ""), (False, "\r\n", ""), (False, "\n", " \t "), (True, "\r\n", "  ")])
@pytest.mark.parametrize("kind", list(CLEAN_FILES))
def test_every_reader_ignores_a_bom_crlf_and_trailing_whitespace(tmp_path, kind, bom, end, trailing):
    """One reading for every input file: the same examples as from the clean file, whatever the variant."""
    data, labels = CLEAN_FILES[kind]
    task = get_task("xcopa" if kind in ("copa", "siqa") else kind)
    (tmp_path / "clean").mkdir()
    (tmp_path / "variant").mkdir()
    if labels:
        _write(tmp_path / "clean" / "f-labels.lst", labels, False, "\n", "")
        _write(tmp_path / "variant" / "f-labels.lst", labels, bom, end, trailing)
    clean = task.read(_write(tmp_path / "clean" / "f.jsonl", data, False, "\n", ""))
    assert task.read(_write(tmp_path / "variant" / "f.jsonl", data, bom, end, trailing)) == clean


@pytest.mark.parametrize("task, name", [("xnli", "dir.tsv"), ("ner", "dir.tsv"), ("xcopa", "dir.jsonl")])
def test_a_directory_given_as_a_file_says_so(tmp_path, task, name):
    (tmp_path / name).mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"'{tmp_path / name}' is a directory, not a file")):
        get_task(task).read(tmp_path / name)


def test_siqa_labels_directory_says_so(tmp_path):
    (tmp_path / "dev.jsonl").write_text(SIQA_RECORD + "\n", encoding="utf-8")
    (tmp_path / "dev-labels.lst").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"'{tmp_path / 'dev-labels.lst'}' is a directory, not a file")):
        XCOPA().read(tmp_path / "dev.jsonl")


# ---- encoding and batching --------------------------------------------------------------------


def test_xnli_encoding_and_batch(tokenizer):
    examples = XNLI().read(data_file("xnli/dev-tr.tsv"))[:3]
    features = XNLI().encode(examples, tokenizer, max_length=128)
    premise = tokenizer(examples[0].premise, add_special_tokens=False)["input_ids"]
    hypothesis = tokenizer(examples[0].hypothesis, add_special_tokens=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert features[0]["input_ids"] == [cls, *premise, sep, sep, *hypothesis, sep]
    assert all(len(f["input_ids"]) <= 12 for f in XNLI().encode(examples, tokenizer, max_length=12))
    batch = XNLI().collate(features, tokenizer.pad_token_id)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch.input_ids.shape == batch.attention_mask.shape == (3, max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()
    assert batch.labels.tolist() == [e.label for e in examples]
    assert XNLI().predict(torch.nn.functional.one_hot(batch.labels, 3).float(), batch) == batch.labels.tolist()


def test_ner_first_sub_token_alignment_matches_word_ids(tokenizer):
    examples = NER().read(data_file("panx/dev-tr.tsv"))[:50]
    for example, feature in zip(examples, NER().encode(examples, tokenizer, max_length=512)):
        reference = tokenizer(list(example.words), is_split_into_words=True)
        word_ids = reference.word_ids()
        expected = [
            IGNORE if w is None or (i > 0 and word_ids[i - 1] == w) else NER.label_names.index(example.tags[w])
            for i, w in enumerate(word_ids)
        ]
        assert feature["input_ids"] == reference["input_ids"]
        assert feature["labels"] == expected


def test_ner_word_without_sub_token_gets_unk(tokenizer):
    example = TaggedSentence(("Ali", "\u200b", "geldi"), ("B-PER", "O", "O"))
    assert tokenizer("\u200b", add_special_tokens=False)["input_ids"] == []
    feature = NER().encode([example], tokenizer, max_length=32)[0]
    first = [i for i, label in enumerate(feature["labels"]) if label != IGNORE]
    assert [feature["labels"][i] for i in first] == [1, 0, 0]
    assert feature["input_ids"][first[1]] == tokenizer.unk_token_id


def test_ner_truncation_predicts_kept_words_and_scores_the_rest_as_o(tokenizer):
    examples = [e for e in NER().read(data_file("panx/dev-en.tsv"))[:200] if len(e.words) >= 8][:2]
    features = NER().encode(examples, tokenizer, max_length=8)
    batch = NER().collate(features, tokenizer.pad_token_id)
    assert batch.input_ids.shape[1] <= 8
    assert (batch.input_ids[:, 0] == tokenizer.cls_token_id).all()
    gold_logits = torch.nn.functional.one_hot(batch.labels.clamp(min=0), 7).float()
    predictions = NER().predict(gold_logits, batch)
    kept = [(f != IGNORE).sum().item() for f in batch.labels]
    assert [len(p) for p in predictions] == kept and all(0 < k < len(e.words) for k, e in zip(kept, examples))
    assert predictions == [list(e.tags[:k]) for e, k in zip(examples, kept)]
    scores = NER().score(examples, predictions)
    assert scores["truncated_words"] == sum(len(e.words) for e in examples) - sum(kept)
    assert scores["n"] == 2
    full = NER().encode(examples, tokenizer, max_length=512)
    batch = NER().collate(full, tokenizer.pad_token_id)
    predictions = NER().predict(torch.nn.functional.one_hot(batch.labels.clamp(min=0), 7).float(), batch)
    assert NER().score(examples, predictions) == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "n": 2, "truncated_words": 0}


def test_ner_all_sub_tokens_carry_their_word_s_tag(tokenizer):
    """`--ner-labels all`: the labels are the word's tag at every position `word_ids()` maps to a word."""
    examples = NER().read(data_file("panx/dev-tr.tsv"))[:50]
    multi_piece = 0
    for example, feature in zip(examples, NER("all").encode(examples, tokenizer, max_length=512)):
        reference = tokenizer(list(example.words), is_split_into_words=True)
        word_ids = reference.word_ids()
        assert feature["input_ids"] == reference["input_ids"]
        assert feature["labels"] == [IGNORE if w is None else NER.label_names.index(example.tags[w]) for w in word_ids]
        assert feature["word_ids"] == [-1 if w is None else w for w in word_ids]
        multi_piece += len(word_ids) - 2 - len(example.words)
    assert multi_piece > 0  # words of several sub-tokens are there, where the two readings differ


def test_ner_all_predicts_every_sub_token_grouped_by_word(tokenizer):
    example = TaggedSentence(("Mustafa", "Kemal", "geldi"), ("B-PER", "I-PER", "O"))
    batch = NER("all").collate(NER("all").encode([example], tokenizer, max_length=32), tokenizer.pad_token_id)
    pieces = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in example.words]
    predictions = NER("all").predict(torch.nn.functional.one_hot(batch.labels.clamp(min=0), 7).float(), batch)
    assert predictions == [[[tag] * n for tag, n in zip(example.tags, pieces)]]
    assert NER("all").score([example], predictions)["f1"] == 1.0


@pytest.mark.parametrize("tags, predicted, precision, recall, f1, truncated", [
    # sub-tokens: gold B-PER B-PER | O (two one-piece entities), predicted B-PER I-PER | O (one two-piece entity)
    (("B-PER", "O"), [[["B-PER", "I-PER"], ["O"]]], 0.0, 0.0, 0.0, 0),
    # gold B-PER | B-PER B-PER | O: 3 entities; predicted B-PER | B-PER O | O: 2, both right
    (("B-PER", "B-PER", "O"), [[["B-PER"], ["B-PER", "O"], ["O"]]], 1.0, 2 / 3, 0.8, 0),
    # last two words cut: each counts as one sub-token predicted O; gold B-PER B-PER | O | B-PER
    (("B-PER", "O", "B-PER"), [[["B-PER", "B-PER"]]], 1.0, 2 / 3, 0.8, 2),
])
def test_ner_all_scores_over_sub_tokens_hand_cases(tags, predicted, precision, recall, f1, truncated):
    example = TaggedSentence(tuple(f"w{i}" for i in range(len(tags))), tags)
    scores = NER("all").score([example], predicted)
    assert scores == {"f1": pytest.approx(f1), "precision": pytest.approx(precision), "recall": pytest.approx(recall), "n": 1, "truncated_words": truncated}


def test_ner_labelling_names_the_known_readings():
    with pytest.raises(ConfigError, match="unknown sub-token labelling 'every' .known: first, all."):
        NER("every")


def choice_rows_checked(row: list[int], cls: int, sep: int) -> list[list[int]]:
    """The segments of `<s> context </s></s> question </s></s> choice </s>`, after checking the specials."""
    assert row[0] == cls and row[-1] == sep
    segments, current = [], []
    for token in row[1:-1]:
        if token == sep:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    assert len(segments) == 5 and segments[1] == segments[3] == []  # two </s> between segments
    return [segments[0], segments[2], segments[4]]


@pytest.mark.parametrize("name, num_choices", [("siqa/dev.jsonl", 3), ("xcopa/tr/val.tr.jsonl", 2), ("xcopa/train-en.jsonl", 2)])
def test_choice_layout_token_by_token(tokenizer, name, num_choices):
    examples = XCOPA().read(data_file(name))[:4]
    features = XCOPA().encode(examples, tokenizer, max_length=128)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    for example, feature in zip(examples, features):
        assert len(feature["input_ids"]) == num_choices and feature["label"] == example.label
        for row, choice in zip(feature["input_ids"], example.choices):
            assert choice_rows_checked(row, cls, sep) == [ids(example.context), ids(example.question), ids(choice)]
    batch = XCOPA().collate(features, tokenizer.pad_token_id)
    assert batch.num_choices == num_choices
    assert batch.input_ids.shape[0] == 4 * num_choices
    for b, feature in enumerate(features):
        for c, row in enumerate(feature["input_ids"]):
            assert batch.input_ids[b * num_choices + c, : len(row)].tolist() == row
            assert batch.attention_mask[b * num_choices + c].sum().item() == len(row)
    logits = torch.nn.functional.one_hot(batch.labels, num_choices).float()
    assert XCOPA().predict(logits, batch) == [e.label for e in examples]


def test_choice_truncation_cuts_the_context_first(tokenizer):
    example = XCOPA().read(data_file("siqa/dev.jsonl"))[0]
    ids = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in (example.context, example.question, example.choices[0])}
    assert len(ids[example.context]) > 3
    max_length = 6 + 3 + len(ids[example.question]) + len(ids[example.choices[0]])
    row = XCOPA().encode([example], tokenizer, max_length=max_length)[0]["input_ids"][0]
    context, question, choice = choice_rows_checked(row, tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert len(row) == max_length
    assert (context, question, choice) == (ids[example.context][:3], ids[example.question], ids[example.choices[0]])


def test_collate_refuses_mixed_choice_counts():
    with pytest.raises(ValueError, match="same number of choices"):
        XCOPA().collate([{"input_ids": [[0, 2]] * 2, "label": 0}, {"input_ids": [[0, 2]] * 3, "label": 1}], pad_id=1)


def test_batch_to_keeps_num_choices():
    batch = XCOPA().collate([{"input_ids": [[0, 5, 2], [0, 2]], "label": 1}], pad_id=1).to("cpu")
    assert batch.num_choices == 2 and batch.input_ids.tolist() == [[0, 5, 2], [0, 2, 1]] and batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


# ---- metrics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gold, predicted, precision, recall, f1, truncated",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-ORG"], 1 / 2, 1 / 2, 1 / 2, 0),
        (["B-ORG", "I-ORG", "I-ORG", "O"], ["B-ORG", "I-ORG", "O", "O"], 0.0, 0.0, 0.0, 0),  # a partial span is wrong
        (["B-PER", "O", "B-LOC", "I-LOC", "B-ORG"], ["B-PER", "O", "B-LOC", "O", "O"], 1 / 2, 1 / 3, 2 / 5, 0),
        (["B-PER", "O", "B-LOC"], ["B-PER"], 1.0, 1 / 2, 2 / 3, 2),  # two words cut by truncation count as O
    ],
)
def test_ner_score_hand_cases(gold, predicted, precision, recall, f1, truncated):
    example = TaggedSentence(tuple(f"w{i}" for i in range(len(gold))), tuple(gold))
    scores = NER().score([example], [predicted])
    assert scores == pytest.approx({"f1": f1, "precision": precision, "recall": recall, "n": 1, "truncated_words": truncated})


@pytest.mark.parametrize(
    "task, example", [(XNLI(), lambda label: PairExample("p", "h", label)), (XCOPA(), lambda label: ChoiceExample("c", "q", ("a", "b", "c"), label))]
)
def test_accuracy_hand_case(task, example):
    examples = [example(label) for label in (0, 1, 1, 2)]
    assert task.score(examples, [0, 1, 2, 0]) == {"accuracy": 0.5, "n": 4}


@pytest.mark.parametrize("task, predictions", [(XNLI(), [0]), (NER(), []), (XCOPA(), [0, 1, 0])])
def test_score_needs_one_prediction_per_example(task, predictions):
    examples = [TaggedSentence(("a",), ("O",))] * 2 if task.name == "ner" else [PairExample("p", "h", 0)] * 2
    with pytest.raises(ValueError, match="one prediction per example"):
        task.score(examples, predictions)
