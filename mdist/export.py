"""Export: one plain Hugging Face directory per student (model + the teacher's tokenizer).

The directories load with `AutoModelForMaskedLM.from_pretrained` in a process that never imports
mdist: the config records no mdist attention function, and shared modules are saved as ordinary
(tied) weights of each student.
"""
from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from mdist.students import StudentGroup


def model_card(name: str, languages: list[str], config, facts: dict) -> str:
    """README.md of an exported student: what it is, where it came from, how to load it."""
    lines = [
        "---", f"language: [{', '.join(languages)}]", "library_name: transformers", "tags: [mdist, knowledge-distillation, xlm-roberta]", "---",
        f"# Student `{name}` ({', '.join(languages)}), distilled with mdist", "",
        f"A {config.num_hidden_layers}-layer, {config.hidden_size}-wide {config.model_type} masked-LM student of the teacher "
        f"`{facts['teacher']}`, trained with the `{facts['strategy']}` strategy for {facts['steps']} steps ({facts['tokens']:,} tokens).",
        "", "```python", "from transformers import AutoModelForMaskedLM, AutoTokenizer",
        f'model = AutoModelForMaskedLM.from_pretrained("students/{name}")', f'tokenizer = AutoTokenizer.from_pretrained("students/{name}")', "```", "",
    ]
    return "\n".join(lines)


def export_students(group: StudentGroup, tokenizer: PreTrainedTokenizerBase, out_dir: Path, facts: dict) -> dict[str, Path]:
    """Write students/<name>/ per student; `facts` (teacher, strategy, steps, tokens) go into its model card."""
    paths = {}
    for name, student in group.students.items():
        path = out_dir / "students" / name
        path.mkdir(parents=True, exist_ok=True)
        student.config.architectures = [type(student).__name__]
        student.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
        (path / "README.md").write_text(model_card(name, group.languages[name], student.config, facts), encoding="utf-8")
        paths[name] = path
    return paths
