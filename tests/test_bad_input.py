"""Bad input stops with one line naming the key or file: exit code 2, no traceback.

One table: each case is a function that breaks something in a fresh copy of the tiny teacher (or
around it, in `run()`: a fresh copy of a finished 2-step run at `{tmp}/out`, or in `shards(...)`)
and returns the command line; `@case(expect)` registers it with the text its error line must contain (`{teacher}`
and `{tmp}` are filled in). Add a case by adding a function.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from mdist.cli import main

CASES: dict[str, tuple] = {}


def case(expect: str):
    def register(build):
        CASES[build.__name__] = (build, expect)
        return build
    return register


def distill(tmp: Path, teacher: Path, *sets: str) -> list[str]:
    argv = ["distill", "--recipe", "tiny", "--out", str(tmp / "out"), "--set", f"teacher.path={teacher}", "--set", "train.steps=1"]
    return argv + [item for s in sets for item in ("--set", s)]


def prep(tmp: Path, tokenizer_dir: Path) -> list[str]:
    (tmp / "en.txt").write_text("one document\n\nanother document\n")
    return ["prep", "--lang", "en", "--input", str(tmp / "en.txt"), "--out", str(tmp / "shards"), "--tokenizer", str(tokenizer_dir), "--no-progress"]


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def drop_tokenizer(teacher: Path) -> None:
    for name in ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json"):
        (teacher / name).unlink(missing_ok=True)


# ---- the teacher directory -------------------------------------------------------------------

@case("teacher config '{teacher}/config.json' is not valid JSON")
def teacher_config_not_json(tmp, teacher, run, request):
    (teacher / "config.json").write_text("{not json")
    return distill(tmp, teacher)


@case("teacher '{teacher}' has model_type 'bert'")
def teacher_not_xlmr(tmp, teacher, run, request):
    edit_json(teacher / "config.json", model_type="bert")
    return distill(tmp, teacher)


@case("teacher directory '{teacher}' has no weights")
def teacher_without_weights(tmp, teacher, run, request):
    (teacher / "model.safetensors").unlink()
    return distill(tmp, teacher)


@case("teacher '{teacher}': tokenizer has")
def teacher_vocabulary_smaller_than_tokenizer(tmp, teacher, run, request):
    edit_json(teacher / "config.json", vocab_size=50)
    return distill(tmp, teacher)


@case("teacher directory '{teacher}' has no tokenizer")
def teacher_without_tokenizer_files(tmp, teacher, run, request):
    drop_tokenizer(teacher)
    return distill(tmp, teacher)


@case("teacher '{teacher}': tokenizer has only")
def teacher_tokenizer_far_smaller_than_vocabulary(tmp, teacher, run, request):
    edit_json(teacher / "config.json", vocab_size=5000)
    return distill(tmp, teacher)


@case("teacher '{teacher}': tokenizer has no <mask>")
def teacher_tokenizer_without_mask(tmp, teacher, run, request):
    edit_json(teacher / "tokenizer_config.json", mask_token=None)
    return distill(tmp, teacher)


@case("teacher directory '{teacher}' has no tokenizer")
def prep_tokenizer_dir_without_tokenizer(tmp, teacher, run, request):
    drop_tokenizer(teacher)
    return prep(tmp, teacher)


@case("teacher '{teacher}': tokenizer has only")
def prep_tokenizer_far_smaller_than_vocabulary(tmp, teacher, run, request):
    edit_json(teacher / "config.json", vocab_size=5000)
    return prep(tmp, teacher)


# ---- configuration values: each rejected before any model is built ----------------------------

SETTINGS = [  # (case, --set overrides, the line names the key and what is legal)
    ("log_every_zero", ["train.log_every=0"], "config key 'train.log_every' must be >= 1, got 0"),
    ("lr_negative", ["train.lr=-1"], "config key 'train.lr' must be > 0, got -1.0"),
    ("lr_nan", ["train.lr=.nan"], "config key 'train.lr' must be > 0, got nan"),
    ("weight_decay_negative", ["train.weight_decay=-0.1"], "config key 'train.weight_decay' must be >= 0, got -0.1"),
    ("warmup_negative", ["train.warmup_steps=-1"], "config key 'train.warmup_steps' must be >= 0, got -1"),
    ("seed_negative", ["train.seed=-1"], "config key 'train.seed' must be >= 0, got -1"),
    ("temperature_zero", ["loss.temperature=0"], "config key 'loss.temperature' must be > 0, got 0.0"),
    ("mlm_probability_one", ["train.mlm_probability=1"], "config key 'train.mlm_probability' must be < 1 (a probability), got 1.0"),
    ("teacher_dtype_unknown", ["teacher.dtype=fp16"], "config key 'teacher.dtype': 'fp16' is not one of auto, bf16, fp32"),
    ("shuffle_block_zero", ["data.shuffle_block=0"], "config key 'data.shuffle_block' must be >= 1, got 0"),
    ("worker_timeout_negative", ["data.worker_timeout_s=-1"], "config key 'data.worker_timeout_s' must be > 0, got -1.0"),
    ("dist_timeout_zero", ["dist.timeout_s=0"], "config key 'dist.timeout_s' must be > 0, got 0.0"),
    ("tiny_hidden_not_multiple_of_heads", ["teacher.tiny.hidden=30"], "config key 'teacher.tiny.hidden' (30) must be a multiple of teacher.tiny.heads (4)"),
    ("seq_len_beyond_teacher_positions", ["train.seq_len=100"], "config key 'train.seq_len' (100) exceeds the teacher's longest input, 64 tokens"),
    ("student_deeper_than_teacher", ["students.layers=6"], "config key 'students.layers' (6) exceeds the teacher's 4 layers"),
    ("narrow_student_from_teacher", ["students.hidden=16"], "config key 'students.init': 'teacher' copies the teacher's tensors and needs students.hidden 32"),
    ("student_hidden_not_multiple_of_heads", ["students.hidden=30", "students.init=random"], "config key 'students.hidden' (30) must be a multiple of the teacher's 4 attention heads"),
    ("init_mapping_last", ["students.init_mapping=last"], "config key 'students.init_mapping': 'last' gives no teacher layer to every student layer"),
    # upper bounds: each numeric key has one, with its reason (mdist.config._ranges)
    ("batch_size_huge", ["train.batch_size=100000"], "config key 'train.batch_size' must be <= 65536 (sequences per language per micro-batch; use train.grad_accum), got 100000"),
    ("tiny_vocab_huge", ["teacher.tiny.vocab=1000000000000"], "config key 'teacher.tiny.vocab' must be <= 262144 (a tiny test teacher), got 1000000000000"),
    ("tiny_max_positions_huge", ["teacher.tiny.max_positions=1000000000"], "config key 'teacher.tiny.max_positions' must be <= 8194"),
    ("lr_above_one", ["train.lr=10"], "config key 'train.lr' must be < 1 (an Adam step of more than 1 per parameter diverges), got 10.0"),
    ("dist_timeout_huge", ["dist.timeout_s=1e300"], "config key 'dist.timeout_s' must be < 604800.0 (a week), got 1e+300"),
    ("lr_infinite", ["train.lr=.inf"], "config key 'train.lr' must be < 1"),
    # values of odd shapes
    ("steps_past_64_bits", ["train.steps=1" + "0" * 30], "config key 'train.steps' must be a number of magnitude below 2**63"),
    ("lr_integer_too_long_for_a_float", ["train.lr=1" + "0" * 400], "config key 'train.lr' must be a number of magnitude below 2**63"),
    ("override_past_4300_digits", ["train.steps=1" + "0" * 5000], "override 'train.steps=...': the value cannot be read as YAML"),
    ("override_not_yaml", ["train.steps=["], "override 'train.steps=...': the value cannot be read as YAML"),
    ("override_python_tag", ["train.steps=!!python/name:os.system"], "override 'train.steps=...': the value cannot be read as YAML"),
    ("batch_size_list", ["train.batch_size=[4]"], "config key 'train.batch_size' must be of type int, got [4]"),
    ("batch_size_empty", ["train.batch_size="], "config key 'train.batch_size' must be of type int, got None"),
    ("loss_weight_nan", ["loss.weights={mlm: .nan}"], "config key 'loss.weights.mlm' must be >= 0, got nan"),
    ("student_name_empty", ["students.groups={'': [en]}"], "config key 'students.groups.': student name '' must be letters, digits"),
    ("student_name_with_a_dot", ["students.groups={a.b: [en]}"], "student name 'a.b' must be letters, digits"),
    ("language_empty", ["students.groups={en: ['']}"], "config key 'students.groups.en': language '' must be letters, digits"),
    ("language_listed_twice", ["students.groups={en: [en, en]}"], "config key 'students.groups.en': student 'en' lists a language twice (en, en)"),
]
for _name, _sets, _expect in SETTINGS:
    CASES[_name] = (lambda tmp, teacher, run, request, sets=_sets: distill(tmp, teacher, *sets), _expect)


# ---- numeric command-line options: argparse's one line naming the option ------------------------

OPTIONS = [  # (case, command line, expected)
    ("prep_docs_per_shard_zero", ["prep", "--lang", "en", "--input", "x.txt", "--out", "s", "--docs-per-shard", "0"], "argument --docs-per-shard: must be >= 1, got 0"),
    ("prep_shard_size_negative", ["prep", "--lang", "en", "--input", "x.txt", "--out", "s", "--shard-size-mb", "-1"], "argument --shard-size-mb: must be > 0, got -1"),
    ("eval_batch_size_zero", ["eval", "perplexity", "--files", "x.txt", "--out", "o.json", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    ("eval_limit_not_a_number", ["eval", "retrieval", "--src-file", "a", "--trg-file", "b", "--out", "o.json", "--limit", "ten"], "argument --limit: must be an integer, got 'ten'"),
    ("prep_shard_size_huge", ["prep", "--lang", "en", "--input", "x.txt", "--out", "s", "--shard-size-mb", "1e300"], "argument --shard-size-mb: must be <= 1048576, got 1e300"),
    ("eval_batch_size_huge", ["eval", "perplexity", "--files", "x.txt", "--out", "o.json", "--batch-size", "1000000"], "argument --batch-size: must be <= 65536, got 1000000"),
    ("eval_seed_negative", ["eval", "perplexity", "--files", "x.txt", "--out", "o.json", "--seed", "-3"], "argument --seed: must be >= 0, got -3"),
]
for _name, _argv, _expect in OPTIONS:
    CASES[_name] = (lambda tmp, teacher, run, request, argv=_argv: argv, _expect)


@case("the run needs 0.22 GiB per rank, 0.21 GiB more than the 0.01 GiB budget of each of 1 rank(s) (largest part: activations, 0.12 GiB); nothing fits")
def batch_beyond_memory(tmp, teacher, run, request):
    """A stated memory budget (`dist.memory_gib`) is checked on CPU ranks too: 512 sequences of 32 tokens per
    language cannot fit 10 MiB: one student's saved activations alone are 512 × 32 tokens × 2 layers × 3,328 bytes
    (mdist.memory on CPU ranks: 4 · (9.5 · 32 + 2 · 64) + 2 · 32 + 12 · 4 heads · 32) = 104 MiB, and the teacher
    outputs kept for the step (2 languages × 512 × 32 × 13 × 32 × 4 bytes = 52 MiB) stay at any micro-batch, so
    nothing fits on one rank; the line says by how much."""
    return distill(tmp, teacher, "train.batch_size=512", "dist.memory_gib=0.01")


# ---- paths: each says what it is when it is not what the command needs --------------------------

@case("config key 'teacher.path': teacher directory '{tmp}/afile' is a file, not a directory")
def teacher_path_is_a_file(tmp, teacher, run, request):
    (tmp / "afile").write_text("x")
    return distill(tmp, tmp / "afile")


@case("config key 'data.text.en': file '{tmp}' is a directory, not a file")
def text_file_is_a_directory(tmp, teacher, run, request):
    return distill(tmp, teacher, "data.kind=text", f"data.text={{en: ['{tmp}'], tr: ['{tmp}']}}")


@case("recipe file '{tmp}/r.yaml' is a directory, not a file")
def recipe_is_a_directory(tmp, teacher, run, request):
    (tmp / "r.yaml").mkdir()
    return ["distill", "--recipe", str(tmp / "r.yaml"), "--out", str(tmp / "out")]


@case("argument --out: '{tmp}/afile' is a file, not a directory")
def distill_out_is_a_file(tmp, teacher, run, request):
    (tmp / "afile").write_text("x")
    return ["distill", "--recipe", "tiny", "--out", str(tmp / "afile")]


@case("argument --out: '{tmp}/afile/o.json' cannot be created: '{tmp}/afile' is a file, not a directory")
def eval_out_under_a_file(tmp, teacher, run, request):
    (tmp / "afile").write_text("x")
    return ["eval", "perplexity", "--model", str(teacher), "--files", str(tmp / "afile"), "--out", str(tmp / "afile" / "o.json")]


@case("argument --out: '{tmp}' is a directory, not a file")
def eval_out_is_a_directory(tmp, teacher, run, request):
    return ["eval", "perplexity", "--model", str(teacher), "--files", str(tmp), "--out", str(tmp)]


@case("'{tmp}' is a directory, not a file")
def eval_input_is_a_directory(tmp, teacher, run, request):
    return ["eval", "perplexity", "--model", str(teacher), "--files", str(tmp), "--out", str(tmp / "o.json")]


@case("input file '{tmp}' is a directory, not a file")
def prep_input_is_a_directory(tmp, teacher, run, request):
    return ["prep", "--lang", "en", "--input", str(tmp), "--out", str(tmp / "shards"), "--no-progress"]


@case("argument --out: '{teacher}/config.json' is a file, not a directory")
def prep_out_is_a_file(tmp, teacher, run, request):
    return ["prep", "--lang", "en", "--input", str(teacher / "config.json"), "--out", str(teacher / "config.json"), "--no-progress"]


@case("argument --out: '{teacher}/config.json' is a file, not a directory")
def baseline_out_is_a_file(tmp, teacher, run, request):
    return ["baseline", "--teacher", str(teacher), "--layers", "1", "--out", str(teacher / "config.json")]


@case("argument --out: '{teacher}/config.json' is a file, not a directory")
def finetune_out_is_a_file(tmp, teacher, run, request):
    return ["finetune", "--task", "xnli", "--strategy", "full-trg", "--model", str(teacher), "--trg", "tr", "--train", str(tmp), "--eval", str(tmp), "--out", str(teacher / "config.json")]


@case("'{tmp}' is a directory, not a file")
def finetune_train_is_a_directory(tmp, teacher, run, request):
    return ["finetune", "--task", "xnli", "--strategy", "full-trg", "--model", str(teacher), "--trg", "tr", "--train", str(tmp), "--eval", str(tmp), "--out", str(tmp / "f")]


def finetune_on(tmp: Path, model: Path, *extra: str, task: str = "xnli") -> list[str]:
    """A finetune command line on `model`, with small valid task files of `task`."""
    if task == "xcopa":
        (tmp / "data.jsonl").write_text('{"premise": "p q", "choice1": "a", "choice2": "b", "question": "cause", "label": 0}\n' * 4)
    else:
        (tmp / "data.jsonl").write_text("a b\tc d\tneutral\ne f\tg h\tentailment\n")
    return ["finetune", "--task", task, "--strategy", "full-trg", "--model", str(model), "--trg", "tr", "--train", str(tmp / "data.jsonl"),
            "--eval", str(tmp / "data.jsonl"), "--out", str(tmp / "f"), "--epochs", "1", *extra]


def task_model(tmp: Path, teacher: Path) -> Path:
    """A task model of `teacher` as `mdist finetune --save-model` writes one."""
    from mdist.transfer.model import ModelSpec, build_task_model, save_task_model

    spec = ModelSpec("xnli", str(teacher))
    save_task_model(build_task_model(spec, "cpu")[0], spec, tmp / "task-model")
    return tmp / "task-model"


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


@case("model directory '{teacher}' has no tokenizer")
def finetune_model_without_tokenizer(tmp, teacher, run, request):
    drop_tokenizer(teacher)
    return finetune_on(tmp, teacher)


@case("model '{teacher}': tokenizer has only")
def finetune_model_with_a_foreign_tokenizer(tmp, teacher, run, request):
    from transformers import AutoTokenizer

    (teacher / "tokenizer.json").unlink()  # the sentencepiece model of another, smaller vocabulary
    shutil.copy(request.getfixturevalue("small_tokenizer_dir") / "sentencepiece.bpe.model", teacher / "sentencepiece.bpe.model")
    assert len(AutoTokenizer.from_pretrained(str(teacher))) < 100
    return finetune_on(tmp, teacher)


@case("model weights '{teacher}/model.safetensors' is truncated")
def finetune_model_weights_cut_short(tmp, teacher, run, request):
    cut_short(teacher / "model.safetensors")
    return finetune_on(tmp, teacher)


@case("teacher weights '{teacher}/model.safetensors' is truncated")
def teacher_weights_cut_short(tmp, teacher, run, request):
    cut_short(teacher / "model.safetensors")
    return distill(tmp, teacher)


@case("model directory '{teacher}' has no weights")
def finetune_model_without_weights(tmp, teacher, run, request):
    (teacher / "model.safetensors").unlink()
    return finetune_on(tmp, teacher)


@case("model config '{teacher}/config.json' is not valid JSON")
def finetune_model_config_broken(tmp, teacher, run, request):
    (teacher / "config.json").write_text('{"model_type": "xlm-roberta",')
    return finetune_on(tmp, teacher)


@case("{tmp}/task-model/task_model.pt: not a whole task model")
def finetune_task_teacher_weights_cut_short(tmp, teacher, run, request):
    cut_short(task_model(tmp, teacher) / "task_model.pt")
    return finetune_on(tmp, teacher, "--task-teacher", str(tmp / "task-model"))


@case("{tmp}/task-model/task_model.pt: does not match {tmp}/task-model/task_model.json: tensors 16 missing (e.g. encoder.encoder.layer.4.")
def finetune_task_teacher_spec_not_its_weights(tmp, teacher, run, request):
    edit_json(task_model(tmp, teacher) / "task_model.json", extra_layers=1)
    return finetune_on(tmp, teacher, "--task-teacher", str(tmp / "task-model"))


@case("{tmp}/task-model/task_model.json: not a task model spec: extra_layers is not int")
def finetune_task_teacher_spec_wrong_type(tmp, teacher, run, request):
    edit_json(task_model(tmp, teacher) / "task_model.json", extra_layers="1")
    return finetune_on(tmp, teacher, "--task-teacher", str(tmp / "task-model"))


@case("'{teacher}/config.json' is a file, not a directory")
def finetune_task_teacher_is_a_file(tmp, teacher, run, request):
    return finetune_on(tmp, teacher, "--task-teacher", str(teacher / "config.json"))


@pytest.fixture(scope="module")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    from mdist.tokenizer import train_xlmr_tokenizer

    out = tmp_path_factory.mktemp("small-tokenizer")
    train_xlmr_tokenizer([f"word{i} other{i % 7}" for i in range(200)], 40, out, model_max_length=64)
    return out


@case("--max-length 4 leaves xnli inputs no text: 4 special tokens plus at least one token, --max-length >= 5")
def finetune_max_length_below_the_xnli_specials(tmp, teacher, run, request):
    return finetune_on(tmp, teacher, "--max-length", "4")


@case("--max-length 6 leaves xcopa inputs no text: 6 special tokens plus at least one token, --max-length >= 7")
def finetune_max_length_below_the_xcopa_specials(tmp, teacher, run, request):
    return finetune_on(tmp, teacher, "--max-length", "6", task="xcopa")


@case("'{teacher}' takes at most 5 tokens (its position limit); xcopa inputs need at least 7")
def finetune_model_positions_below_the_xcopa_specials(tmp, teacher, run, request):
    from transformers import AutoConfig, XLMRobertaForMaskedLM

    config = AutoConfig.from_pretrained(str(teacher))
    config.max_position_embeddings = 7  # 5 tokens after XLM-R's offset of 2
    XLMRobertaForMaskedLM(config).save_pretrained(str(teacher))
    return finetune_on(tmp, teacher, task="xcopa")


FINETUNE = [  # (case, options, expected): checked before any task file is read
    ("finetune_lr_infinite", ["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
    ("finetune_few_shot_lr_nan", ["--few-shot-lr", "nan"], "argument --few-shot-lr: must be a finite number, got nan"),
    ("finetune_warmup_infinite", ["--warmup=-inf"], "argument --warmup: must be a finite number, got -inf"),
    ("finetune_weight_decay_nan", ["--weight-decay", "nan"], "argument --weight-decay: must be a finite number, got nan"),
    ("finetune_batch_size_huge", ["--batch-size", "10000000"], "--batch-size must be <= 65536, got 10000000"),
    ("finetune_seed_negative", ["--seed", "-1"], "--seed must be >= 0, got -1"),
]
for _name, _options, _expect in FINETUNE:
    CASES[_name] = (lambda tmp, teacher, run, request, options=_options: [
        "finetune", "--task", "xnli", "--strategy", "full-trg", "--model", str(teacher), "--trg", "tr",
        "--train", str(tmp / "train.tsv"), "--eval", str(tmp / "eval.tsv"), "--out", str(tmp / "f"), *options], _expect)


# ---- training data ---------------------------------------------------------------------------

def shards(tmp: Path, teacher: Path, request, workers: int = 0) -> tuple[list[str], Path]:
    """A fresh copy of prepared en/tr shards, and the distill command line that reads them."""
    target = Path(shutil.copytree(request.getfixturevalue("prepared_shards"), tmp / "shards"))
    return distill(tmp, teacher, "data.kind=shards", f"data.shards={target}", f"data.num_workers={workers}"), target


@case("{tmp}/shards/en.manifest.json: not a JSON manifest")
def manifest_not_json(tmp, teacher, run, request):
    argv, target = shards(tmp, teacher, request)
    (target / "en.manifest.json").write_text("{")
    return argv


@case("{tmp}/shards/en.manifest.json: not a manifest written by `mdist prep`")
def manifest_without_shards(tmp, teacher, run, request):
    argv, target = shards(tmp, teacher, request)
    (target / "en.manifest.json").write_text(json.dumps({"tokenizer": None}))
    return argv


def manifest_entry(tmp: Path, teacher: Path, request, **entry) -> list[str]:
    """Shards whose en manifest's first shard entry has `entry` changed."""
    argv, target = shards(tmp, teacher, request)
    manifest = json.loads((target / "en.manifest.json").read_text())
    manifest["shards"][0].update(entry)
    (target / "en.manifest.json").write_text(json.dumps(manifest))
    return argv


@case("{tmp}/shards/en.manifest.json: not a manifest written by `mdist prep`")
def manifest_shard_name_leaves_the_directory(tmp, teacher, run, request):
    return manifest_entry(tmp, teacher, request, name="../shards/en-000000.tar")


@case("{tmp}/shards/en.manifest.json: not a manifest written by `mdist prep`")
def manifest_shard_name_not_a_string(tmp, teacher, run, request):
    return manifest_entry(tmp, teacher, request, name=5)


@case("{tmp}/shards/en.manifest.json: not a manifest written by `mdist prep`")
def manifest_shard_size_a_string(tmp, teacher, run, request):
    return manifest_entry(tmp, teacher, request, bytes="100")


@case("config key 'data.shards' is not set")
def shards_without_a_directory(tmp, teacher, run, request):
    return distill(tmp, teacher, "data.kind=shards")


@case("{tmp}/shards/en-000001.tar: 0 bytes, prep wrote")
def shard_empty(tmp, teacher, run, request):
    argv, target = shards(tmp, teacher, request)
    (target / "en-000001.tar").write_bytes(b"")
    return argv


@case("{tmp}/shards/en-000000.tar: 1000 bytes, prep wrote")
def shard_truncated(tmp, teacher, run, request):
    argv, target = shards(tmp, teacher, request)
    (target / "en-000000.tar").write_bytes((target / "en-000000.tar").read_bytes()[:1000])
    return argv


@case("{tmp}/shards/en-00000")
def shards_of_random_bytes_met_by_a_loader_worker(tmp, teacher, run, request):
    """Same sizes, so only reading finds out: the worker names the shard, the run stops with one line."""
    argv, target = shards(tmp, teacher, request, workers=2)
    for shard in target.glob("en-*.tar"):
        shard.write_bytes(random.Random(0).randbytes(shard.stat().st_size))
    return argv


@case("language 'en', rank 0, worker 0: shard(s) {tmp}/shards/en-000000.tar, {tmp}/shards/en-000001.tar, {tmp}/shards/en-000002.tar and 1 more hold no sample")
def shards_holding_no_sample(tmp, teacher, run, request):
    """Whole tars with the sizes the manifest records, but not one sample: reading them on would never yield."""
    argv, target = shards(tmp, teacher, request)
    manifest = json.loads((target / "en.manifest.json").read_text())
    for shard in manifest["shards"]:
        with tarfile.open(target / shard["name"], "w"):
            pass
        shard["bytes"] = (target / shard["name"]).stat().st_size
    (target / "en.manifest.json").write_text(json.dumps(manifest))
    return argv


@case("{tmp}/en.txt.xz: not an xz stream")
def plain_text_named_xz(tmp, teacher, run, request):
    (tmp / "en.txt.xz").write_text("one document\n\nanother one\n")
    return ["prep", "--lang", "en", "--input", str(tmp / "en.txt.xz"), "--out", str(tmp / "shards"), "--no-progress"]


@case("recipe file '{tmp}/recipe.yaml' is not text")
def recipe_not_text(tmp, teacher, run, request):
    (tmp / "recipe.yaml").write_bytes(bytes(range(128, 256)))
    return ["distill", "--recipe", str(tmp / "recipe.yaml"), "--out", str(tmp / "out")]


@case("{tmp}/en.txt: empty text file")
def empty_text_file(tmp, teacher, run, request):
    (tmp / "en.txt").write_text("\n\n")
    (tmp / "tr.txt").write_text("bir iki\n")
    return distill(tmp, teacher, "data.kind=text", f"data.text={{en: [{tmp}/en.txt], tr: [{tmp}/tr.txt]}}")


@case("{tmp}/heldout.tar: no sample with a non-empty 'txt' member")
def heldout_shard_without_text(tmp, teacher, run, request):
    with tarfile.open(tmp / "heldout.tar", "w") as tar:
        tar.addfile(tarfile.TarInfo("000000000.txt"))  # one empty document
    return distill(tmp, teacher, "train.eval_every=1", f"data.heldout={{en: ['{tmp}/heldout.tar']}}")


# ---- the output directory --------------------------------------------------------------------

@case("{tmp}/out holds a finished run (summary.json, students, checkpoints); continue it with --resume, choose a new --out, or replace it with --overwrite")
def out_holds_a_finished_run(tmp, teacher, run, request):
    for name in ("students/en", "checkpoints/step1"):
        (tmp / "out" / name).mkdir(parents=True)
    (tmp / "out" / "summary.json").write_text(json.dumps({"steps": 1}))
    return distill(tmp, teacher)


@case("{tmp}/out holds an earlier run (checkpoints); continue it with --resume")
def out_holds_an_interrupted_run(tmp, teacher, run, request):
    (tmp / "out" / "checkpoints" / "step1").mkdir(parents=True)
    return distill(tmp, teacher)


@case("{tmp}/out/summary.json is not valid JSON")
def resume_with_a_corrupt_summary(tmp, teacher, run, request):
    (tmp / "out").mkdir()
    (tmp / "out" / "summary.json").write_text("{")
    return distill(tmp, teacher) + ["--resume"]


# ---- checkpoints ------------------------------------------------------------------------------

RESUME = ("train.steps=3", "train.save_every=1")


def without_hashes(step: Path) -> None:
    """`COMPLETE` as an older mdist wrote it (sizes only), so that a same-sized unreadable file reaches
    torch (with its hash, the checkpoint would not verify and the one before would be used)."""
    marker = json.loads((step / "COMPLETE").read_text())
    del marker["sha256"]
    (step / "COMPLETE").write_text(json.dumps(marker))


@case("{tmp}/out/checkpoints/step2/rank0.pt is missing from a complete checkpoint; remove {tmp}/out/checkpoints/step2 to resume from step1, or start afresh with --overwrite")
def checkpoint_rank_file_missing(tmp, teacher, run, request):
    (run() / "checkpoints" / "step2" / "rank0.pt").unlink()
    return distill(tmp, teacher, *RESUME) + ["--resume"]


@case("{tmp}/out/checkpoints/step2/mp_rank_00_model_states.pt has 100 bytes")
def checkpoint_model_states_truncated(tmp, teacher, run, request):
    path = run() / "checkpoints" / "step2" / "mp_rank_00_model_states.pt"
    path.write_bytes(path.read_bytes()[:100])
    return distill(tmp, teacher, *RESUME) + ["--resume"]


@case("cannot load {tmp}/out/checkpoints/step2/mp_rank_00_model_states.pt: ")
def checkpoint_model_states_garbage(tmp, teacher, run, request):
    path = run() / "checkpoints" / "step2" / "mp_rank_00_model_states.pt"
    path.write_bytes(bytes(path.stat().st_size))
    without_hashes(path.parent)
    return distill(tmp, teacher, *RESUME) + ["--resume"]


@case("cannot read {tmp}/out/checkpoints/step2/rank0.pt: ")
def checkpoint_rank_file_garbage(tmp, teacher, run, request):
    path = run() / "checkpoints" / "step2" / "rank0.pt"
    path.write_bytes(bytes(path.stat().st_size))
    without_hashes(path.parent)
    return distill(tmp, teacher, *RESUME) + ["--resume"]


@case("{tmp}/out/checkpoints/step2 was written by 2 rank(s), this run has 1: resume with 2")
def checkpoint_of_another_world_size(tmp, teacher, run, request):
    step = run() / "checkpoints" / "step2"
    shutil.copy(step / "rank0.pt", step / "rank1.pt")
    marker = json.loads((step / "COMPLETE").read_text())
    marker["files"]["rank1.pt"] = marker["files"]["rank0.pt"]
    (step / "COMPLETE").write_text(json.dumps(marker))
    return distill(tmp, teacher, *RESUME) + ["--resume"]


@case("{tmp}/out/checkpoints/step2/mp_rank_00_model_states.pt does not match the sha256 that {tmp}/out/checkpoints/step2/COMPLETE records for it (its bytes changed after it was written); not resuming from {tmp}/out/checkpoints/step2, and no older checkpoint in {tmp}/out/checkpoints verifies: start afresh with --overwrite")
def checkpoint_bytes_changed_in_every_checkpoint(tmp, teacher, run, request):
    checkpoints = run() / "checkpoints"
    for tag in ("step1", "step2"):
        path = checkpoints / tag / "mp_rank_00_model_states.pt"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01  # size unchanged
        path.write_bytes(bytes(data))
    return distill(tmp, teacher, *RESUME) + ["--resume"]


@case("runs verify: '{tmp}/out' holds no checkpoints (no checkpoints/step*)")
def verify_a_directory_without_checkpoints(tmp, teacher, run, request):
    (tmp / "out").mkdir()
    return ["runs", "verify", str(tmp / "out")]


# ---- study files: refused before any stage runs or is submitted ----------------------------------

def study(tmp: Path, teacher: Path, *sets: str, name: str = "tiny") -> list[str]:
    data = Path(__file__).resolve().parents[2] / "shared" / "data"  # conftest.SHARED_DATA; the checks below read no file of it
    return ["study", "run", name, "--out", str(tmp / "study"), "--slurm", "--set", f"teacher={teacher}", "--set", f"data={data}"] + [
        item for s in sets for item in ("--set", s)]


@case("study file '{tmp}/s.yaml' is not valid YAML: ")
def study_file_not_yaml(tmp, teacher, run, request):
    (tmp / "s.yaml").write_text("name: tiny\nlanguages: [tr\n")
    return study(tmp, teacher, name=str(tmp / "s.yaml"))


@case("study 'tiny': unknown config key 'finetune.model' (known in 'finetune': models, options, seeds)")
def study_unknown_key(tmp, teacher, run, request):
    return study(tmp, teacher, "finetune.model={teacher: [full-src]}")


@case("study 'tiny': config key 'finetune.models.monoshot': unknown transfer strategy 'adapter-middle'")
def study_unknown_transfer_strategy(tmp, teacher, run, request):
    return study(tmp, teacher, "finetune.models={monoshot: [full-trg, adapter-middle]}")


@case("study 'tiny': config key 'distill.monoshot' (recipe 'tiny'): config key 'strategy': unknown strategy 'monoshoot'")
def study_unknown_distillation_strategy(tmp, teacher, run, request):
    return study(tmp, teacher, "distill.monoshot={recipe: tiny, set: [strategy=monoshoot]}")


@case("study 'tiny': config key 'corpus.en': file '{tmp}/text/en/udhr.en.txt' does not exist")
def study_data_file_missing(tmp, teacher, run, request):
    return study(tmp, teacher, f"data={tmp}")


@case("study 'tiny': config key 'teacher': teacher directory '{tmp}/none' does not exist")
def study_teacher_missing(tmp, teacher, run, request):
    return study(tmp, tmp / "none")


@pytest.fixture(scope="module")
def prepared_shards(tmp_path_factory, synthetic_docs) -> Path:
    from mdist.data.prep import ShardLimits, prepare

    root = tmp_path_factory.mktemp("shards")
    for lang, docs in synthetic_docs.items():
        (root / f"{lang}.txt").write_text("".join(d + "\n\n" for d in docs))
        prepare(lang, [root / f"{lang}.txt"], root / "out", ShardLimits(max_documents=30), progress=False)
    return root / "out"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_teacher_dir) -> Path:
    out = tmp_path_factory.mktemp("finished")
    argv = ["distill", "--recipe", "tiny", "--out", str(out), "--set", f"teacher.path={tiny_teacher_dir}", "--set", "tracking.enabled=false"]
    assert main(argv + [item for s in ("train.steps=2", "train.save_every=1") for item in ("--set", s)]) == 0
    return out


@pytest.mark.timeout(300)  # a case that waits forever fails instead
@pytest.mark.parametrize("name", CASES)
def test_bad_input_stops_with_one_line_naming_it(name, tmp_path, tiny_teacher_dir, capsys, request):
    build, expect = CASES[name]
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)

    def run() -> Path:
        return Path(shutil.copytree(request.getfixturevalue("finished_run"), tmp_path / "out"))

    argv = build(tmp_path, teacher, run, request)
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if re.match(r"mdist [a-z ]+: error: ", line)]
    assert len(errors) == 1 and expect.format(teacher=teacher, tmp=tmp_path) in errors[0], errors
