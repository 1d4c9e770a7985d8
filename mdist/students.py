"""The student group: P monolingual students in one module (one DeepSpeed engine).

Students are Hugging Face models of the teacher's class with M layers (and optionally a narrower
width). Shared parts are one module object: with `share_embeddings` every student's embedding
module is the first student's; with `tie_head` the MLM decoder is tied to the (shared) word
embeddings and, when embeddings are shared too, the whole MLM head is one module (the thesis's
g_share = {0, M+1}). Parameters are deduplicated by identity, so ZeRO holds each shared tensor once.
"""
from __future__ import annotations

import copy
import re
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from mdist.capture import ATTENTION_IMPLEMENTATION
from mdist.config import StudentsConfig
from mdist.encode import EncoderOutput, encode
from mdist.strategies import layer_mapping

_LAYER_KEY = re.compile(r"^(.*\.layers?\.)(\d+)(\..*)$")


def student_config(teacher_config, cfg: StudentsConfig, tie_head: bool):
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = cfg.layers
    config.tie_word_embeddings = tie_head
    if cfg.hidden is not None and cfg.hidden != teacher_config.hidden_size:
        ratio = cfg.hidden / teacher_config.hidden_size
        config.hidden_size = cfg.hidden
        config.intermediate_size = max(1, int(teacher_config.intermediate_size * ratio))
        if cfg.hidden % config.num_attention_heads:
            raise ValueError(f"students.hidden={cfg.hidden} is not a multiple of the teacher's {config.num_attention_heads} heads")
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    return config


@contextmanager
def full_tensor(tensor: torch.Tensor):
    """The whole tensor inside the block, also when it is a ZeRO-3 partition (gathered alone)."""
    if not hasattr(tensor, "ds_id"):
        yield tensor
        return
    import deepspeed  # only partitioned (ZeRO-3) teachers get here

    with deepspeed.zero.GatheredParameters([tensor]):
        yield tensor


def init_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel, mapping: str) -> None:
    """Copy every teacher tensor into the student; student layer m takes teacher layer g_init(m).

    Tensors are copied one at a time, so a ZeRO-3 partitioned teacher (XL / XXL) is never gathered
    whole on any rank.
    """
    pairs = dict(layer_mapping(mapping, student.config.num_hidden_layers, teacher.config.num_hidden_layers))
    if len(pairs) != student.config.num_hidden_layers:
        raise ValueError(f"init mapping '{mapping}' does not give a teacher layer for every student layer")
    teacher_tensors = {**dict(teacher.named_buffers()), **dict(teacher.named_parameters(remove_duplicate=False))}
    new_state = {}
    for key in student.state_dict():
        match = _LAYER_KEY.match(key)
        source = key
        if match and "encoder" in key:
            source = f"{match.group(1)}{pairs[int(match.group(2)) + 1] - 1}{match.group(3)}"
        with full_tensor(teacher_tensors[source]) as tensor:
            new_state[key] = tensor.detach().clone()
    student.load_state_dict(new_state)


class StudentGroup(nn.Module):
    """Students by name, each owning languages; per-language routing is a forward argument."""

    def __init__(self, teacher: PreTrainedModel, cfg: StudentsConfig, teacher_hidden: int):
        super().__init__()
        self.languages = {name: list(langs) for name, langs in cfg.groups.items()}
        self.students = nn.ModuleDict()
        narrow = cfg.hidden is not None and cfg.hidden != teacher_hidden
        if narrow and cfg.init == "teacher":
            raise ValueError("students.init: 'teacher' needs students as wide as the teacher; use 'random' with students.hidden")
        config = student_config(teacher.config, cfg, cfg.tie_head)
        first = None
        for name in self.languages:
            student = type(teacher)(config)
            if cfg.init == "teacher":
                init_from_teacher(student, teacher, cfg.init_mapping)
            if first is not None:
                self._share(student, first, cfg)
            if first is None:
                first = student
            self.students[name] = student
        # Learnable projections W (d' -> d) for every distilled hidden state (index 0: embeddings).
        self.projections = nn.ModuleDict(
            {
                name: nn.ModuleList(nn.Linear(cfg.hidden, teacher_hidden, bias=False) for _ in range(cfg.layers + 1))
                for name in self.languages
            }
            if narrow
            else {}
        )

    @staticmethod
    def _share(student: PreTrainedModel, first: PreTrainedModel, cfg: StudentsConfig) -> None:
        if cfg.share_embeddings:
            student.base_model.embeddings = first.base_model.embeddings
            if cfg.tie_head:
                student.lm_head = first.lm_head
        if cfg.tie_head:
            student.lm_head.decoder.weight = student.base_model.embeddings.word_embeddings.weight

    def student_for(self, lang: str) -> list[str]:
        return [name for name, langs in self.languages.items() if lang in langs]

    def project(self, name: str, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        if not self.projections:
            return hidden
        return self.projections[name][layer](hidden)

    def forward(
        self, student: str, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, labels_BL: torch.Tensor,
        masked_N: torch.Tensor | None = None, padded: bool | None = None,
    ) -> EncoderOutput:
        return encode(self.students[student], input_ids_BL, attention_mask_BL, labels_BL, masked_N=masked_N, padded=padded)
