"""Dynamic 80/10/10 masking and XLM-R packing."""
from __future__ import annotations

import torch

from mdist.data.masking import MaskingSpec, mask_tokens
from mdist.data.packing import pack

SPECIAL = (0, 1, 2, 3, 99)  # <s> <pad> </s> <unk> <mask>
SPEC = MaskingSpec(mask_id=99, vocab_size=100, special_ids=SPECIAL)


def _ids(B=256, L=128):
    ids = torch.randint(4, 99, (B, L), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1], ids[:8, 100:] = 0, 2, 1  # specials and padding
    return ids


def test_rates_and_targets():
    ids = _ids()
    masked, labels = mask_tokens(ids, SPEC, torch.Generator().manual_seed(1))
    picked = labels != -100
    regular = ~torch.isin(ids, torch.tensor(SPECIAL))
    assert not (picked & ~regular).any(), "special tokens and padding are never picked"
    assert abs(picked.sum() / regular.sum() - 0.15) < 0.01
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(masked[~picked], ids[~picked])
    as_mask = (masked == 99) & picked
    unchanged = (masked == ids) & picked
    replaced = picked & ~as_mask & ~unchanged
    n = picked.sum()
    assert abs(as_mask.sum() / n - 0.8) < 0.02
    assert abs(unchanged.sum() / n - 0.1) < 0.02 + 0.01  # a random draw can hit the original token
    assert abs(replaced.sum() / n - 0.1) < 0.02
    assert not torch.isin(masked[replaced], torch.tensor(SPECIAL)).any()


def test_masking_is_drawn_anew_and_reproducible():
    ids = _ids()
    a = mask_tokens(ids, SPEC, torch.Generator().manual_seed(1))[1]
    b = mask_tokens(ids, SPEC, torch.Generator().manual_seed(2))[1]
    c = mask_tokens(ids, SPEC, torch.Generator().manual_seed(1))[1]
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_packing_joins_documents_the_xlmr_way():
    seqs = pack([[10, 11, 12], [20, 21], [30]], seq_len=6, cls_id=0, sep_id=2, pad_id=1)
    assert seqs == [[0, 10, 11, 12, 2, 2], [0, 20, 21, 2, 30, 2]]
    tail = pack([[10, 11, 12, 13, 14]], seq_len=6, cls_id=0, sep_id=2, pad_id=1)
    assert tail == [[0, 10, 11, 12, 13, 2], [0, 14, 2, 1, 1, 1]]
