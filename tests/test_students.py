"""Student group: sharing by identity, initialisation from the teacher, Algorithm 1's per-student updates."""
from __future__ import annotations

import pytest
import torch

from mdist.config import StudentsConfig
from mdist.losses import DistillLoss
from mdist.optim import GroupMaskedAdamW, set_active_students, student_param_groups
from mdist.students import StudentGroup
from mdist.teacher import load_teacher
from mdist.train import teacher_outputs
from mdist.data.batch import TokenBatch


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    return load_teacher(tiny_teacher_dir)[0]


def _group(teacher, **kwargs):
    cfg = StudentsConfig(groups={"en": ["en"], "tr": ["tr"]}, layers=2, **kwargs)
    return StudentGroup(teacher, cfg, teacher.config.hidden_size)


def _batch(teacher, lang, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, teacher.config.vocab_size - 1, (2, 10), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, 2:5] = ids[:, 2:5]
    return TokenBatch(lang, ids, torch.ones_like(ids), labels)


def _step(group, teacher, optimizer, student, lang, seed):
    batch = _batch(teacher, lang, seed)
    target = teacher_outputs(teacher, {lang: batch})[lang]
    loss_fn = DistillLoss.build("monoshot", None, None, 1.0, 2, teacher.config.num_hidden_layers)
    out = group(student, batch.input_ids_BL, batch.attention_mask_BL, batch.labels_BL)
    loss, _ = loss_fn(out, target, batch.attention_mask_BL, batch.labels_BL)
    set_active_students(optimizer, [student])
    optimizer.zero_grad(set_to_none=False)  # inactive students keep zero-filled grads (as in a DeepSpeed engine):
    loss.backward()  # a plain AdamW would move them by momentum and weight decay; only the group mask keeps them still
    optimizer.step()


@pytest.mark.parametrize("shared", [True, False])
def test_turkish_step_moves_english_embeddings_only_when_shared(teacher, shared):
    group = _group(teacher, share_embeddings=shared)
    en, tr = group.students["en"], group.students["tr"]
    assert (en.roberta.embeddings is tr.roberta.embeddings) == shared
    assert en.lm_head.decoder.weight is en.roberta.embeddings.word_embeddings.weight  # tied head
    optimizer = GroupMaskedAdamW(student_param_groups(dict(group.students), group.projections, 0.01), lr=1e-2)
    _step(group, teacher, optimizer, "en", "en", seed=0)  # gives en's parameters Adam momentum
    assert all(p.grad is not None for p in en.parameters())  # and grads that stay allocated (zeroed) during tr's step
    en_embeddings = en.roberta.embeddings.word_embeddings.weight.detach().clone()
    en_layer = en.roberta.encoder.layer[0].attention.self.query.weight.detach().clone()
    _step(group, teacher, optimizer, "tr", "tr", seed=1)
    changed = not torch.equal(en_embeddings, en.roberta.embeddings.word_embeddings.weight)
    assert changed == shared
    # en's own layers stay put during tr's update: no decay, no momentum step (GroupMaskedAdamW)
    torch.testing.assert_close(en_layer, en.roberta.encoder.layer[0].attention.self.query.weight, rtol=0, atol=0)


def test_shared_parameters_are_held_once(teacher):
    group = _group(teacher)
    embedding = group.students["tr"].roberta.embeddings.word_embeddings.weight
    assert sum(p is embedding for p in group.parameters()) == 1
    shared_size = sum(p.numel() for p in group.students["en"].roberta.embeddings.parameters()) + sum(
        p.numel() for n, p in group.students["en"].lm_head.named_parameters() if n != "decoder.weight"
    )
    separate = _group(teacher, share_embeddings=False)
    assert sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in group.parameters()) == shared_size
    untied = _group(teacher, share_embeddings=False, tie_head=False)
    en = untied.students["en"]
    assert en.lm_head.decoder.weight is not en.roberta.embeddings.word_embeddings.weight


def test_init_from_teacher_uniform_layers(teacher):
    group = _group(teacher, init="teacher", init_mapping="uniform")
    student = group.students["tr"]
    # 4 teacher layers -> 2 student layers: g(1)=2, g(2)=4
    for m, g in ((0, 1), (1, 3)):
        torch.testing.assert_close(student.roberta.encoder.layer[m].output.dense.weight, teacher.roberta.encoder.layer[g].output.dense.weight)
    torch.testing.assert_close(student.roberta.embeddings.word_embeddings.weight, teacher.roberta.embeddings.word_embeddings.weight)
    bottom = _group(teacher, init_mapping="bottom").students["en"]
    torch.testing.assert_close(bottom.roberta.encoder.layer[1].output.dense.weight, teacher.roberta.encoder.layer[1].output.dense.weight)


def test_narrow_students_get_projections(teacher):
    group = _group(teacher, hidden=16, init="random")
    assert group.students["en"].config.hidden_size == 16
    assert group.project("en", 1, torch.zeros(1, 3, 16)).shape == (1, 3, teacher.config.hidden_size)
    with pytest.raises(ValueError, match="as wide as the teacher"):
        _group(teacher, hidden=16, init="teacher")
