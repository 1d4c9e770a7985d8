"""The study's outputs from its stages' results: the transfer tables (thesis tables 4.4–4.6 layout,
mdist.transfer.table), the retrieval table per model and layer set, the per-layer retrieval plots
(mdist.evaluation.plot), the perplexity table, and `report.md` linking them."""
from __future__ import annotations

import json
from pathlib import Path

from mdist.evaluation.layers import LAYER_SETS
from mdist.evaluation.plot import load_results, plot_layer_curves
from mdist.evaluation.retrieval import SCORES
from mdist.markdown import markdown_table
from mdist.transfer.table import transfer_tables


def retrieval_table(results: dict[str, dict]) -> str:
    """Rows: models; columns: each score's best single layer and its layer sets."""
    header = ["model", *(f"{score} {name}" for score in SCORES for name in ("best layer", *LAYER_SETS))]
    rows = []
    for model, result in results.items():
        cells = []
        for score in SCORES:
            layers = {name: acc for name, acc in result[score].items() if name.startswith("layer_")}
            best = max(layers, key=layers.get)
            cells += [f"{layers[best]:.3f} ({best.removeprefix('layer_')})", *(f"{result[score][name]:.3f}" for name in LAYER_SETS)]
        rows.append([model, *cells])
    return markdown_table(header, rows) + "\n"


def perplexity_table(results: dict[str, dict[str, dict]]) -> str:
    """Rows: models; columns: languages."""
    langs = sorted({lang for by_lang in results.values() for lang in by_lang})
    rows = [[model, *(f"{by_lang[lang]['pseudo_perplexity']:.2f}" if lang in by_lang else "–" for lang in langs)] for model, by_lang in results.items()]
    return markdown_table(["model", *langs], rows) + "\n"


def write_report(out: Path, name: str) -> Path:
    """Write tables/, plots/ and report.md under the study directory `out`; return the report's path."""
    tables, plots = out / "tables", out / "plots"
    tables.mkdir(parents=True, exist_ok=True)
    sections = [f"# Study '{name}'", "", f"Stage states: `mdist study status {out}`; MLflow: `mdist runs --store {out} --tag mdist.study={name}`.", ""]
    for lang_dir in sorted(p for p in (out / "eval" / "retrieval").glob("*") if p.is_dir()):
        paths = sorted(lang_dir.glob("*.json"))
        results = load_results(paths, [path.stem for path in paths])
        table, plot = tables / f"retrieval-{lang_dir.name}.md", plots / f"retrieval-{lang_dir.name}.png"
        table.write_text(retrieval_table(results), encoding="utf-8")
        plot_layer_curves(results, plot)
        sections += [f"## Retrieval {lang_dir.name}–en (accuracy)", "", table.read_text(encoding="utf-8"),
                     f"Table: [{table.relative_to(out)}]({table.relative_to(out)}) · per-layer curves: ![retrieval {lang_dir.name}]({plot.relative_to(out)})", ""]
    perplexities: dict[str, dict] = {}
    for path in sorted((out / "eval" / "perplexity").glob("*/*.json")):
        perplexities.setdefault(path.stem, {})[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
    if perplexities:
        table = tables / "perplexity.md"
        table.write_text(perplexity_table(perplexities), encoding="utf-8")
        sections += ["## MLM pseudo-perplexity", "", table.read_text(encoding="utf-8"), f"Table: [{table.relative_to(out)}]({table.relative_to(out)})", ""]
    if (out / "finetune").is_dir():
        table = tables / "transfer.md"
        table.write_text(transfer_tables(out / "finetune"), encoding="utf-8")
        sections += ["# Downstream transfer (layout of thesis tables 4.4–4.6)", "", table.read_text(encoding="utf-8"),
                     f"Tables: [{table.relative_to(out)}]({table.relative_to(out)}); runs under `finetune/<model>/<strategy>/`", ""]
    report = out / "report.md"
    report.write_text("\n".join(sections), encoding="utf-8")
    return report
