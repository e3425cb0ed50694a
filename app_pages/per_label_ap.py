"""Per-label AP: planned view (a later release)."""

import ui

ui.coming_later(
    "Per-label AP",
    [
        "average precision per label before and after adaptation, and against the baselines "
        "(source-only, bce-partial, target-oracle where gold labels exist);",
        "macro and micro mAP, precision-recall curves, and F1 at a threshold you choose per label;",
        "without gold labels: the PU estimate from held-out tagged positives, marked as an estimate.",
    ],
    today="Today: each finished adaptation's per-label AP (gold or estimated) is in its run report "
    "(Export page) and its macro AP in the run history (Adapt page).",
)
