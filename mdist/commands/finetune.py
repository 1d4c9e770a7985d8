"""`mdist finetune`: zero-shot (and few-shot) cross-lingual transfer of students, teachers or baselines.

    mdist finetune --task xnli --strategy full-trg --students RUN_DIR --src en --trg tr \\
        --train xnli/train-en.tsv --eval xnli/dev-tr.tsv --out ft/xnli-full-trg [--shots 10 100 --shots-file F]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mdist.argtypes import DefaultsOnce, add_device_option, at_least, chosen_device, output_dir
from mdist.errors import ConfigError
from mdist.transfer import HEAD_KINDS, SCHEDULES, SUB_TOKEN_LABELS, TASK_NAMES, TASK_TEACHER_LOSSES
from mdist.transfer.strategies import STRATEGIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("finetune", help="fine-tune on the source language with a transfer strategy, evaluate on the target language",
                            formatter_class=DefaultsOnce)
    parser.add_argument("--task", required=True, choices=TASK_NAMES, help="xnli (accuracy), ner (PAN-X, entity F1), xcopa (train SIQA/COPA, accuracy)")
    parser.add_argument("--strategy", required=True, metavar="NAME", help=f"one of {', '.join(STRATEGIES)}, or freeze+k for any k")
    models = parser.add_argument_group("models (one of)")
    models.add_argument("--students", type=Path, metavar="RUN_DIR", help="a distillation run: S_src and S_trg are the students of --src and --trg")
    models.add_argument("--model", type=Path, help="one model for both languages (teacher, baseline, bilingual student)")
    models.add_argument("--src-model", type=Path, help="source-language model directory (with --trg-model)")
    models.add_argument("--trg-model", type=Path, help="target-language model directory (with --src-model)")
    parser.add_argument("--src", default="en", help="source language (training data)")
    parser.add_argument("--trg", required=True, help="target language (evaluation data)")
    parser.add_argument("--train", type=Path, required=True, help="source-language training file (XNLI tsv, PAN-X tsv, SIQA or COPA jsonl)")
    parser.add_argument("--train-labels", type=Path, help="SIQA labels file (default: <train stem>-labels.lst beside it)")
    parser.add_argument("--eval", type=Path, required=True, help="target-language evaluation file")
    parser.add_argument("--eval-labels", type=Path, help="SIQA-format evaluation labels file")
    parser.add_argument("--out", type=output_dir, required=True, help="output directory (result.json; model/ and model-<k>shot/ with --save-model)")
    parser.add_argument("--label", help="model name in tables and MLflow (default: the run or model directory's name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result in --out")
    settings = parser.add_argument_group("settings (thesis table 4.2)")
    settings.add_argument("--epochs", type=int, help="zero-shot epochs (default: XNLI 10, NER 20, XCOPA 20)")
    settings.add_argument("--batch-size", type=int, default=64, help="examples per optimiser step")
    settings.add_argument("--lr", type=at_least(0, float, strict=True, high=1.0), help="peak learning rate (default: 2e-5 full / SFT, 1e-4 parameter-efficient)")
    settings.add_argument("--weight-decay", type=at_least(0, float, high=1.0), default=0.05, help="AdamW weight decay (none on biases and LayerNorms)")
    settings.add_argument("--warmup", type=at_least(0, float, high=1.0), default=0.1, help="linear warm-up, fraction of the steps")
    settings.add_argument("--max-length", type=int, default=128, help="longest input in tokens (the model's limit applies too)")
    settings.add_argument("--seed", "--seeds", dest="seeds", type=int, nargs="+", default=[42], metavar="SEED",
                          help="one run per seed; with several, each in OUT/seed-<SEED>/ (transfer-table: mean ± std over seeds)")
    settings.add_argument("--train-limit", type=int, help="use only the first N training examples")
    settings.add_argument("--eval-limit", type=int, help="use only the first N evaluation examples")
    add_device_option(settings)
    few = parser.add_argument_group("few-shot (after zero-shot training, on the evaluated target model)")
    few.add_argument("--shots", type=int, nargs="+", default=[], metavar="K", help="k labelled target examples, one continuation per k (thesis: 10 100 500; XCOPA 10 50 100)")
    few.add_argument("--shots-file", type=Path, help="labelled target-language examples; the k are the first k of one seeded shuffle (nested)")
    few.add_argument("--shots-labels", type=Path, help="SIQA-format labels of --shots-file")
    few.add_argument("--few-shot-epochs", type=int, default=50, help="epochs on the k examples")
    few.add_argument("--few-shot-batch-size", type=int, default=32, help="examples per few-shot step")
    few.add_argument("--few-shot-lr", type=at_least(0, float, strict=True, high=1.0), default=2e-5, help="few-shot peak learning rate")
    few.add_argument("--few-shot-schedule", choices=SCHEDULES, default=SCHEDULES[0],
                     help="linear: --warmup then linear decay (thesis §4.2.3); constant: no schedule (table 4.2's '–')")
    readings = parser.add_argument_group("readings of the thesis where it is ambiguous (docs/transfer.md)")
    readings.add_argument("--head", choices=HEAD_KINDS, default=HEAD_KINDS[0],
                          help="classifier on <s> (XNLI, XCOPA): transformers' dense+tanh+linear, or one linear layer (thesis §4.1); NER's tagger is always one linear layer")
    readings.add_argument("--ner-labels", choices=SUB_TOKEN_LABELS, default=SUB_TOKEN_LABELS[0],
                          help="first: each word's tag on its first sub-token, F1 over words; all: every sub-token carries its word's tag, F1 over sub-tokens")
    parser.add_argument("--task-teacher", type=Path, help="task distillation: a teacher fine-tuned with --save-model (its model/ or model-<k>shot/ directory); "
                        "loss = 0.5·MSE(logits) + 0.5·task loss")
    parser.add_argument("--task-teacher-loss", choices=TASK_TEACHER_LOSSES, default=TASK_TEACHER_LOSSES[0],
                        help="what the logit MSE is mixed with: the task loss, or the student's MLM loss on the training batch (§3.3.6 literally; reported as +td-mlm)")
    parser.add_argument("--save-model", action="store_true",
                        help="save the evaluated task model to OUT/model and each few-shot one to OUT/model-<k>shot (each usable as --task-teacher)")
    parser.set_defaults(run=run)


def resolve_models(args: argparse.Namespace) -> dict:
    """Source and target model directories, the table label and the distillation run they come from."""
    given = [name for name in ("students", "model", "src_model") if getattr(args, name) is not None]
    if len(given) != 1 or (args.src_model is None) != (args.trg_model is None):
        raise ConfigError("finetune: give exactly one of --students RUN_DIR, --model DIR, or --src-model DIR with --trg-model DIR")
    if args.students is not None:
        from mdist.evaluation.runs import StudentRun

        run = StudentRun.load(args.students)
        return {"src_model": run.student_dir(args.src), "trg_model": run.student_dir(args.trg), "label": args.label or args.students.name,
                "distillation_run": args.students, "distillation_mlflow_run_id": run.mlflow_run_id}
    from mdist.teacher import check_teacher_dir

    src, trg = (args.model, args.model) if args.model is not None else (args.src_model, args.trg_model)
    for path in {src, trg}:
        check_teacher_dir(path, "model")  # up front: not after the data files are read
    return {"src_model": src, "trg_model": trg, "label": args.label or (src.name if src == trg else f"{src.name}/{trg.name}")}


def seed_dirs(out: Path, seeds: list[int]) -> dict[int, Path]:
    """The output directory of each seed: OUT itself for one seed, OUT/seed-<SEED> for several."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must differ, got {' '.join(map(str, seeds))}")
    return {seeds[0]: out} if len(seeds) == 1 else {seed: out / f"seed-{seed}" for seed in seeds}


def run(args: argparse.Namespace) -> int:
    from mdist.transfer.outputs import RESULT_FILE, check_out, model_dir_name
    from mdist.transfer.runner import TransferConfig, run_transfer

    outs = seed_dirs(args.out, args.seeds)
    model_dirs = [model_dir_name(k) for k in [None, *args.shots]] if args.save_model else []
    for out in outs.values():
        check_out(out, args.overwrite, model_dirs)
    models = resolve_models(args)
    cfgs = [
        TransferConfig(
            task=args.task, strategy=args.strategy, train=args.train, eval=args.eval, out=out, src_lang=args.src, trg_lang=args.trg,
            train_labels=args.train_labels, eval_labels=args.eval_labels, train_limit=args.train_limit, eval_limit=args.eval_limit,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
            max_length=args.max_length, seed=seed, shots=args.shots, shots_file=args.shots_file, shots_labels=args.shots_labels,
            few_shot_epochs=args.few_shot_epochs, few_shot_batch_size=args.few_shot_batch_size, few_shot_lr=args.few_shot_lr,
            task_teacher=args.task_teacher, save_model=args.save_model, device=chosen_device(args.device), head=args.head, ner_labels=args.ner_labels,
            few_shot_schedule=args.few_shot_schedule, task_teacher_loss=args.task_teacher_loss, **models,
        )
        for seed, out in outs.items()
    ]
    for cfg in cfgs:
        cfg.validate()  # every seed's settings, before the first trains
    for cfg in cfgs:
        result = run_transfer(cfg)
        metric = result["metric"]
        line = f"{result['task']} {result['strategy']} seed {cfg.seed}: {result['src']} train {metric} {result['train'][metric]:.3f}, {result['trg']} zero-shot {metric} {result['zero_shot'][metric]:.3f}"
        line += "".join(f", {k}-shot {s[metric]:.3f}" for k, s in result["few_shot"].items())
        print(f"{line} ({result['seconds']:.0f} s); wrote {cfg.out / RESULT_FILE}")
    return 0
