"""Held-out pseudo-perplexity during training (the thesis's figure 4.4).

With `data.heldout: {lang: [files]}` and `train.eval_every: N`, every student is scored on the
held-out text of each language it owns before training (step 0), every N Algorithm-1 steps and after
the last step. Step s means "after s steps". The score is `mdist.evaluation.perplexity`'s: the text is
cut into windows of the student's length and masked once, up front, from a private generator seeded
with `DEFAULT_SEED` (the default of `mdist eval perplexity --seed`), so every evaluation of a
(student, language) scores the same masked positions and the values are comparable across steps.
The last value equals `mdist eval perplexity --students OUT --lang LANG --files FILES` on the exported
student (up to float rounding).

Ranks: every rank scores the whole held-out text through the student engine's own forward (eval mode,
no gradients) and gets the same numbers; rank 0 logs them. Not rank 0 alone, because under ZeRO-3 each
forward gathers its layers' parameters collectively, so a forward on one rank would hang; the engine
forward on every rank is correct for every ZeRO stage and never gathers a whole student onto one rank.
The cost is the held-out forward passes on each rank, so keep the held-out text small (the thesis's
figure needs thousands of sentences, not millions).

Training results do not change: masking draws from its own generator, eval mode draws no dropout, each
module's train/eval mode is restored afterwards, and no parameter, gradient or optimiser state is touched.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mdist.config import RunConfig
from mdist.errors import DataError
from mdist.evaluation.encode import max_tokens
from mdist.evaluation.perplexity import DEFAULT_MAX_LENGTH, DEFAULT_SEED, IGNORE, MaskedText, eval_mode, score_masked
from mdist.evaluation.texts import read_documents

BATCH_SIZE = 16  # windows per forward (the score does not depend on it beyond float rounding)


def read_heldout(cfg: RunConfig) -> dict[str, list[str]]:
    """The held-out texts per language (empty when held-out evaluation is off); read before any model
    is built, so an empty or unreadable file stops the run at once, with its name."""
    if not cfg.train.eval_every:
        return {}
    return {lang: read_documents([Path(f) for f in files]) for lang, files in cfg.data.heldout.items()}


def student_logits(engine, student: str):
    """Vocabulary logits of `student` at the masked positions, through the student engine's forward
    (the same encoder path and tied MLM head as training; ZeRO-3 gathers parameters as in training)."""

    def logits(inputs_BL: torch.Tensor, attention_BL: torch.Tensor, targets_BL: torch.Tensor) -> torch.Tensor:
        out = engine(student, inputs_BL, attention_BL, targets_BL)
        return F.linear(out.head_hidden_ND, out.decoder_weight_VD, out.decoder_bias_V)

    return logits


class HeldOut:
    """The held-out evaluation of one run: masked texts per language, the (student, language) pairs,
    and the history {"<student>/<lang>": [{"step", "ppl", "loss"}, ...]} (saved in checkpoints)."""

    def __init__(self, masked: dict[str, MaskedText], languages: dict[str, list[str]], every: int, device: torch.device):
        self.masked, self.every, self.device = masked, every, device
        self.pairs = [(student, lang) for student, langs in languages.items() for lang in langs if lang in masked]
        self.history: dict[str, list[dict]] = {f"{student}/{lang}": [] for student, lang in self.pairs}

    @classmethod
    def build(cls, cfg: RunConfig, texts: dict[str, list[str]], tokenizer, group, device: torch.device) -> "HeldOut | None":
        if not texts:
            return None
        student = next(iter(group.students.values()))
        length, vocab = max_tokens(student, DEFAULT_MAX_LENGTH), student.config.vocab_size
        masked = {}
        for lang, lang_texts in texts.items():
            masked[lang] = MaskedText.build(tokenizer, lang_texts, vocab, length, DEFAULT_SEED)
            if not any(bool((targets != IGNORE).any()) for _, targets in masked[lang].pairs):
                raise DataError(f"data.heldout.{lang} ({', '.join(cfg.data.heldout[lang])}): no token was masked; give more text")
        return cls(masked, group.languages, cfg.train.eval_every, device)

    def due(self, done: int, total: int) -> bool:
        return done % self.every == 0 or done == total

    def evaluate(self, engine, step: int) -> dict[str, float]:
        """Score every (student, language) after `step` steps; record it; return the MLflow metrics."""
        metrics = {}
        with eval_mode(engine):
            for student, lang in self.pairs:
                result = score_masked(student_logits(engine, student), self.masked[lang], self.device, BATCH_SIZE)
                self.history[f"{student}/{lang}"].append({"step": step, "ppl": result["pseudo_perplexity"], "loss": result["loss"]})
                metrics[f"heldout/{student}/{lang}/ppl"] = result["pseudo_perplexity"]
                metrics[f"heldout/{student}/{lang}/loss"] = result["loss"]
        return metrics

    def load_state_dict(self, history: dict[str, list[dict]]) -> None:
        for key, points in history.items():
            self.history[key] = list(points)
