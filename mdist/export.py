"""Export: one plain Hugging Face directory per student (model + the teacher's tokenizer).

The directories load with `AutoModelForMaskedLM.from_pretrained` in a process that never imports
mdist: the config records no mdist attention function, and shared modules are saved as ordinary
(tied) weights of each student.
"""
from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from mdist.students import StudentGroup


def export_students(group: StudentGroup, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> dict[str, Path]:
    paths = {}
    for name, student in group.students.items():
        path = out_dir / "students" / name
        path.mkdir(parents=True, exist_ok=True)
        student.config.architectures = [type(student).__name__]
        student.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
        paths[name] = path
    return paths
