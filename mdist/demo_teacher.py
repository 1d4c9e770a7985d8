"""The demo's multilingual teacher: a tiny XLM-R pre-trained in-process to be genuinely cross-lingual.

XLM-R is cross-lingual because of pre-training at scale; a tiny model trained for seconds on MLM alone
is not, and then there is no alignment for the students to keep. So the demo's teacher learns two
objectives at once:
- MLM on each language's monolingual documents (what the students' MLM and KL terms distil);
- translation alignment: an InfoNCE loss that makes the mean-pooled states of every layer of a sentence
  and its translation nearest to each other among the batch (training pairs drawn from their own split of
  the synthetic corpus, apart from the held-out retrieval pairs).
The students never see parallel text: whatever alignment they show comes from the teacher through
distillation.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import XLMRobertaForMaskedLM, XLMRobertaTokenizer

from mdist.config import RunConfig
from mdist.data.masking import MaskingSpec
from mdist.data.synthetic import SyntheticCorpus
from mdist.data.text import TextBatchSource
from mdist.optim import warmup_linear_decay
from mdist.run import training_documents
from mdist.teacher import build_tiny_teacher

ALIGNMENT_PAIRS, ALIGNMENT_BATCH, ALIGNMENT_TEMPERATURE = 4000, 64, 0.05
TRAINING_PAIRS_SPLIT = 4  # SyntheticCorpus.parallel split of the teacher's translation pairs (held-out retrieval: 1)


def mean_pooled_layers(model: XLMRobertaForMaskedLM, batch: dict) -> torch.Tensor:
    """[layers, sentences, hidden]: the mean over each sentence's tokens of every transformer layer's output."""
    states = model.roberta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True).hidden_states
    mask_BL1 = batch["attention_mask"].unsqueeze(-1).to(states[0].dtype)
    return torch.stack([(h_BLD * mask_BL1).sum(1) / mask_BL1.sum(1) for h_BLD in states[1:]])


def alignment_loss(src_KBD: torch.Tensor, trg_KBD: torch.Tensor, temperature: float = ALIGNMENT_TEMPERATURE) -> torch.Tensor:
    """Symmetric InfoNCE per layer K: sentence b's translation is the positive, the batch's others the negatives."""
    logits_KBB = F.normalize(src_KBD, dim=-1) @ F.normalize(trg_KBD, dim=-1).transpose(1, 2) / temperature
    target_KB = torch.arange(logits_KBB.shape[1]).expand(logits_KBB.shape[:2])
    forward = F.cross_entropy(logits_KBB.flatten(0, 1), target_KB.flatten())
    backward = F.cross_entropy(logits_KBB.transpose(1, 2).flatten(0, 1), target_KB.flatten())
    return (forward + backward) / 2


def pretrain_teacher(cfg: RunConfig, out_dir: Path, steps: int) -> Path:
    """Build the tiny teacher of `cfg.teacher.tiny` in `out_dir` and train it `steps` steps (MLM + alignment)."""
    docs = training_documents(cfg)
    build_tiny_teacher(cfg.teacher, (d for ds in docs.values() for d in ds), out_dir, cfg.train.seed)
    tokenizer = XLMRobertaTokenizer.from_pretrained(str(out_dir))
    model = XLMRobertaForMaskedLM.from_pretrained(str(out_dir))
    source = TextBatchSource.from_documents(
        docs, tokenizer, cfg.train.seq_len, batch_size=cfg.train.batch_size,
        masking=MaskingSpec.from_tokenizer(tokenizer, len(tokenizer)), seed=cfg.train.seed + 1,
    )
    src_lang, trg_lang = cfg.languages[:2]
    pairs = SyntheticCorpus(seed=cfg.train.seed).parallel(src_lang, trg_lang, ALIGNMENT_PAIRS, split=TRAINING_PAIRS_SPLIT)
    draw = torch.Generator().manual_seed(cfg.train.seed + 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = warmup_linear_decay(optimizer, max(1, steps // 10), steps)
    bar = tqdm(range(steps), desc="pretrain teacher", dynamic_ncols=True)
    for _ in bar:
        mlm = sum(
            model(input_ids=b.input_ids_BL, attention_mask=b.attention_mask_BL, labels=b.labels_BL).loss
            for b in source.next_batches().values()
        ) / len(docs)
        picks = torch.randint(0, ALIGNMENT_PAIRS, (ALIGNMENT_BATCH,), generator=draw).tolist()
        pooled = [mean_pooled_layers(model, tokenizer([side[i] for i in picks], padding=True, return_tensors="pt")) for side in pairs]
        align = alignment_loss(*pooled)
        (mlm + align).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(mlm=f"{mlm.item():.3f}", align=f"{align.item():.3f}")
    model.save_pretrained(str(out_dir))
    return out_dir
