"""Zero- and few-shot cross-lingual transfer (thesis §3.3)."""

TASK_NAMES = ("xnli", "ner", "xcopa")  # `mdist.transfer.tasks.TASKS` holds them; here without torch, for the CLI's choices

# Readings of the thesis where it is ambiguous (README, "Zero- and few-shot transfer"); the first of each is the default.
HEAD_KINDS = ("dense-tanh", "linear")  # classifier on <s>: transformers' dense+tanh+linear, or one linear layer (§4.1)
SUB_TOKEN_LABELS = ("first", "all")  # NER: tag on each word's first sub-token, or on every sub-token
SCHEDULES = ("linear", "constant")  # few-shot learning rate: warm-up + linear decay (§4.2.3), or constant (table 4.2's "–")
TASK_TEACHER_LOSSES = ("task", "mlm")  # task distillation: ½·logit MSE + ½·task loss, or + ½·MLM (§3.3.6 literally)
