"""MixUp samples: planned view (a later release)."""

import ui

ui.coming_later(
    "MixUp samples",
    [
        "the mixed training examples of a run: which tagged positive was mixed with which unlabeled "
        "document, the mixing weight μ, the target and the model's prediction;",
        "the mixed inputs decoded to their nearest tokens, per label and step.",
    ],
)
