"""bench-quality's figures: per-method summary over seeds (JSON and Markdown) and the paper's
label-removal table. Kept apart from the protocol (quality.py) so reading one does not mean
reading the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dallmi_core.config import DEFAULT_METHOD


@dataclass
class QualityResult:
    labels: list[str]
    runs: list[dict] = field(default_factory=list)  # one per (method, seed)

    def summary(self) -> dict:
        methods = {}
        for method in dict.fromkeys(r["method"] for r in self.runs):
            runs = [r for r in self.runs if r["method"] == method]
            maps = np.array([r["map_macro"] for r in runs], dtype=float)
            per_label = {label: _mean([r["per_label_ap"][label] for r in runs]) for label in self.labels}
            methods[method] = {
                "map_macro_mean": float(maps.mean()),
                "map_macro_std": float(maps.std(ddof=1)) if len(maps) > 1 else 0.0,
                "map_micro_mean": _mean([r["map_micro"] for r in runs]),
                **{f"{key}_mean": _mean([r.get(key) for r in runs]) for key in _PREDICTION_FIGURES},
                "per_label_ap": per_label,
                "seeds": [r["seed"] for r in runs],
                "map_macro_by_seed": maps.tolist(),
                "steps_mean": _mean([r.get("steps") for r in runs]),
                "best_step_mean": _mean([r.get("best_step") for r in runs]),
                "seconds_mean": _mean([r["seconds"] for r in runs]),
            }
        eval_on = sorted({r.get("eval_on", "test") for r in self.runs})
        summary = {"labels": self.labels, "eval_on": ",".join(eval_on), "default_method": DEFAULT_METHOD}
        return {**summary, "methods": methods}

    def to_markdown(self) -> str:
        summary = self.summary()["methods"]
        head = (
            "| method | macro mAP (mean ± std) | micro mAP | F1 default / best | prior error | "
            + " | ".join(self.labels)
            + " | steps (best) |"
        )
        rows = [head, "|" + "---|" * (len(self.labels) + 6)]
        for method, s in summary.items():
            cells = [
                f"{s['per_label_ap'][label]:.3f}" if s["per_label_ap"][label] is not None else "n/a"
                for label in self.labels
            ]
            steps = "-" if s["steps_mean"] is None else f"{s['steps_mean']:.0f}"
            if s["best_step_mean"] is not None:
                steps += f" ({s['best_step_mean']:.0f})"
            rows.append(
                f"| {method} | {s['map_macro_mean']:.3f} ± {s['map_macro_std']:.3f} | {_fmt(s['map_micro_mean'])} | "
                f"{_fmt(s['f1_macro_default_mean'])} / {_fmt(s['f1_macro_best_mean'])} | "
                f"{_fmt(s['prior_abs_error_mean'])} | " + " | ".join(cells) + f" | {steps} |"
            )
        return "\n".join(rows)


_PREDICTION_FIGURES = (
    "map_macro_raw",
    "map_micro_raw",
    "f1_macro_default",
    "f1_macro_best",
    "prior_abs_error",
    "thresholded_map_macro",
)


PAPER_HEADLINE = {"aad": 0.199, "bce-partial": 0.522}  # DALLMi's relative mAP gain in the paper (abstract)


def ratio_table(results: dict[float, QualityResult]) -> str:
    """The paper's label-removal comparison: per ratio and method, macro mAP and the paper's thresholded
    AP, and the default method's gain relative to AAD and bce-partial beside the paper's headline."""
    rows = [
        "| removed | method | macro mAP | thresholded AP (paper) | default vs aad | default vs bce-partial |",
        "|---|---|---|---|---|---|",
    ]
    for ratio, result in results.items():
        summary = result.summary()["methods"]
        ours = summary.get(DEFAULT_METHOD, {}).get("map_macro_mean")
        for method, s in summary.items():
            gains = ["", ""]
            if method == DEFAULT_METHOD and ours is not None:
                gains = [_relative(ours, summary.get(b, {}).get("map_macro_mean")) for b in PAPER_HEADLINE]
            rows.append(
                f"| {ratio:.0%} | {method} | {s['map_macro_mean']:.3f} ± {s['map_macro_std']:.3f} | "
                f"{_fmt(s['thresholded_map_macro_mean'])} | {gains[0]} | {gains[1]} |"
            )
    rows.append(
        f"| paper | DALLMi (its headline) | | | +{PAPER_HEADLINE['aad']:.1%} | +{PAPER_HEADLINE['bce-partial']:.1%} |"
    )
    return "\n".join(rows)


def _relative(ours: float, baseline: float | None) -> str:
    return "" if baseline is None or baseline <= 0 else f"{(ours - baseline) / baseline:+.1%}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _mean(values: Sequence) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
