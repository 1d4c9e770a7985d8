"""Baselines without distillation: an M-layer model copied from the teacher's uniform / top / bottom
layers (thesis §4.3.1, XLM-R₆ (Uniform / Top / Bottom)), exported as a plain HF directory."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from transformers import AutoModelForMaskedLM

from mdist.checkpoint_files import write_atomically
from mdist.errors import ConfigError, TeacherError
from mdist.strategies import INIT_MAPPINGS, layer_mapping
from mdist.students import init_from_teacher
from mdist.teacher import check_teacher_dir, load_teacher_tokenizer

def export_baseline(teacher_dir: Path, layers: int, init: str, out_dir: Path) -> dict:
    """Write the baseline to `out_dir` and return its provenance (also in `baseline.json`)."""
    if init not in INIT_MAPPINGS:
        raise ConfigError(f"--init must be one of {', '.join(INIT_MAPPINGS)}, got '{init}'")
    config = check_teacher_dir(teacher_dir)
    teacher_layers = config.get("num_hidden_layers", 0)
    if not 1 <= layers <= teacher_layers:
        raise ConfigError(f"--layers must be between 1 and the teacher's {teacher_layers} layers, got {layers}")
    tokenizer = load_teacher_tokenizer(teacher_dir, config)
    try:
        teacher = AutoModelForMaskedLM.from_pretrained(str(teacher_dir))
    except Exception as err:
        raise TeacherError(f"cannot load the teacher weights in '{teacher_dir}': {type(err).__name__}: {err}") from None
    student_config = copy.deepcopy(teacher.config)
    student_config.num_hidden_layers = layers
    student = type(teacher)(student_config)
    init_from_teacher(student, teacher, init)
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    provenance = {
        "teacher": str(teacher_dir), "layers": layers, "init": init,
        "teacher_layers": [g for _, g in layer_mapping(init, layers, teacher_layers)],
    }
    write_atomically(out_dir / "baseline.json", json.dumps(provenance, indent=2) + "\n")  # last: the directory is complete
    return provenance
