"""Zero- and few-shot cross-lingual transfer (thesis §3.3)."""

TASK_NAMES = ("xnli", "ner", "xcopa")  # `mdist.transfer.tasks.TASKS` holds them; here without torch, for the CLI's choices
