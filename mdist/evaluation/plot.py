"""Per-layer retrieval curves of one or more models, like the thesis's figure 4.1.

One panel per score; a line per model over its single layers, and its layer-set accuracies as
markers to the right of the layers. Uses `matplotlib.figure.Figure`, so no GUI backend or pyplot state.
"""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from mdist.errors import DataError, require_file
from mdist.evaluation.layers import LAYER_SETS
from mdist.evaluation.retrieval import SCORES

TITLES = {"cosine": "cosine of mean-pooled vectors", "bertscore": "BERTScore F1"}


def load_results(paths: list[Path], labels: list[str] | None = None) -> dict[str, dict]:
    """Result JSONs of `mdist eval retrieval`, labelled by `labels` or else by file stem (parent/stem if stems repeat)."""
    if labels is not None and len(labels) != len(paths):
        raise DataError(f"{len(labels)} labels for {len(paths)} result files")
    stems = [path.stem for path in paths]
    labels = labels or [f"{path.parent.name}/{path.stem}" if stems.count(path.stem) > 1 else path.stem for path in paths]
    results = {}
    for label, path in zip(labels, paths):
        require_file(path)
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            if not all(isinstance(result[score], dict) for score in SCORES):
                raise KeyError("scores are not objects")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a retrieval result of 'mdist eval retrieval' ({type(err).__name__}: {err})") from None
        results[label] = result
    return results


def plot_layer_curves(results: dict[str, dict], out: Path) -> None:
    """Write a PNG with per-layer accuracy curves of both scores for every labelled result."""
    depth = max(_num_layers(result) for result in results.values())
    set_x = [depth + 1.5 + j for j in range(len(LAYER_SETS))]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, len(SCORES), sharey=True)
    for ax, score in zip(axes, SCORES):
        for label, result in results.items():
            layers = list(range(_num_layers(result) + 1))
            (line,) = ax.plot(layers, [result[score][f"layer_{k}"] for k in layers], marker="o", label=label)
            ax.plot(set_x, [result[score].get(name, float("nan")) for name in LAYER_SETS], "D", color=line.get_color())
        ax.set_xticks(list(range(depth + 1)) + set_x, [str(k) for k in range(depth + 1)] + list(LAYER_SETS), rotation=45)
        ax.set(title=TITLES[score], xlabel="layer (0 = embeddings) / layer set", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("retrieval accuracy")
    axes[0].legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def _num_layers(result: dict) -> int:
    return max(int(name.removeprefix("layer_")) for name in result["cosine"] if name.startswith("layer_"))
