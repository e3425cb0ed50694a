"""Document embeddings (mean-pooled last hidden state) and scores from one streamed forward pass.

Texts are tokenised page by page and each page runs in length-sorted, dynamically padded batches
under inference mode (the scoring.py pattern), so memory stays bounded on any corpus size. On a
CPU with VNNI it takes the int8 path where that is measured faster (fast_inference.py), as scoring does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from dallmi_core.modeling.fast_inference import inference_model
from dallmi_core.modeling.model import Classifier
from dallmi_core.modeling.scoring import probabilities as calibrated
from dallmi_core.modeling.tokens import TokenizedCorpus, length_sorted_batches


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors [n, T, H] over the real (mask 1) tokens -> [n, H]."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def embed_texts(
    clf: Classifier,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 64,
    page: int = 2048,
    on_page: Callable[[int], None] | None = None,
    fast: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 [n, H], calibrated probabilities float32 [n, L]) in the order of `texts`."""
    model = clf.model
    device = next(model.parameters()).device
    hidden_size = int(model.config.hidden_size)
    embeddings = np.empty((len(texts), hidden_size), dtype=np.float32)
    probabilities = np.empty((len(texts), clf.num_labels), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), page):
                tokens = TokenizedCorpus.build(clf.tokenizer, texts[start : start + page], max_length)
                run = inference_model(model, tokens, device, batch_size, fast)
                for batch in length_sorted_batches(tokens.lengths, run.batch_size):
                    ids, mask = (t.to(device) for t in tokens.collate(batch))
                    out = run.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                    embeddings[start + batch] = mean_pool(out.hidden_states[-1], mask).float().cpu().numpy()
                    probabilities[start + batch] = calibrated(clf, out.logits.float().cpu().numpy())
                if on_page is not None:
                    on_page(min(start + page, len(texts)))
    finally:
        model.train(was_training)
    return embeddings, probabilities
