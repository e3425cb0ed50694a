"""Domain shift: planned view (a later release)."""

import ui

ui.coming_later(
    "Domain shift",
    [
        "how far the target text is from the source text: a 2-D projection of both domains' embeddings;",
        "shift measures (A-distance, MMD) and the terms most typical of each domain.",
    ],
)
