"""The official code's shape, rebuilt faithfully for `dallmi bench-speed` to measure against.

The official scripts tokenise the whole corpus once up front (`dataset.map(..., padding=
"max_length", max_length=128)`) and train in float32; every forward then takes rows of that
padded table. Their step has two structures:

- `trainer` (`pu_bert_trainer.py`, the script its README runs): the random batch, then per label
  its positives, one mixed pair and the chosen unlabeled document: 1 + 3L forwards
  (`step.reference_dallmi_step`);
- `cycle` (`pu_bert_log.py`, the class-cycle sampler): the whole batch once, then per label one
  mixed pair and the chosen unlabeled document again: 1 + 2L forwards (`cycle_reference_step`).

What we keep fixed in both, as in ours: the MixUp term carries a gradient (the official `.item()`
drops it, and with it the backward through the mixed forwards, which the official step therefore
never pays), mu weights the unlabeled document in input and target alike, and the unlabeled batch
is drawn from all target documents. So the same loss is computed on the same draws by every path
(tests/unit/test_speed_reference.py), and only the shape of the work differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dallmi_core.method.losses import dallmi_objective, mixup_term, variational_term
from dallmi_core.method.mixup import MixupDraws, mix_sequences
from dallmi_core.method.sampling import BalancedBatch
from dallmi_core.method.step import StepContext
from dallmi_core.modeling.model import base_embeddings, forward_logits, logits_from_base

OFFICIAL_MAX_LENGTH = 128


class CountingTokenizer:
    """A tokenizer wrapper that counts its calls (the official shape tokenises once per corpus)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@dataclass(frozen=True)
class PaddedCorpus:
    """The official table: every document tokenised once, padded (and truncated) to max_length."""

    input_ids: torch.Tensor  # [n, max_length]
    attention_mask: torch.Tensor  # [n, max_length]

    @classmethod
    def build(cls, tokenizer, texts: Sequence[str], max_length: int = OFFICIAL_MAX_LENGTH) -> PaddedCorpus:
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return cls(enc["input_ids"], enc["attention_mask"])

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, indices, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the padded table, as the official DataLoader stacks them (`pad_to` is moot)."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.input_ids[index], self.attention_mask[index]


def cycle_reference_step(
    context: StepContext, batch: BalancedBatch, mix: MixupDraws | None
) -> tuple[torch.Tensor, dict[str, float]]:
    """`pu_bert_log.py`'s structure: the whole batch (unlabeled + every label's positives, each row
    once) in one forward, then per label its mixed pair(s) and the chosen unlabeled document(s)."""
    model, tokens, cfg, device = context
    act = np.flatnonzero(batch.active)
    n_u = len(batch.unlabeled)
    docs, inverse = np.unique(np.concatenate([batch.unlabeled, batch.positives[act].ravel()]), return_inverse=True)
    rows_u, rows_p = inverse[:n_u], inverse[n_u:].reshape(len(act), -1)
    ids, mask = (t.to(device) for t in tokens.collate(docs))
    z_docs = forward_logits(model, input_ids=ids, attention_mask=mask)
    z_u_all = z_docs[torch.as_tensor(rows_u, device=device)]
    v_terms, r_terms = [], []
    for i, label in enumerate(act):
        z_p = z_docs[torch.as_tensor(rows_p[i], device=device), label]
        v_terms.append(variational_term(z_u_all[:, label : label + 1], z_p[None, :], cfg.variational))
        if mix is None:
            continue
        u_rows = rows_u[mix.pair_u[label]]
        p_rows = rows_p[i][mix.pair_p[label]]
        base = base_embeddings(model, ids[np.concatenate([u_rows, p_rows])], cfg.mixup_at)
        pair_mask = mask[np.concatenate([u_rows, p_rows])]
        m = len(u_rows)
        mu = torch.as_tensor(mix.mu[label], device=device)
        mixed, mixed_mask = mix_sequences(base[:m], base[m:], pair_mask[:m], pair_mask[m:], mu)
        z_mixed = logits_from_base(model, mixed, mixed_mask, cfg.mixup_at)[:, label]
        z_u_pair = forward_logits(model, input_ids=ids[u_rows], attention_mask=mask[u_rows])[:, label]
        r_terms.append(mixup_term(z_u_pair[None, :], z_mixed[None, :], mu[None, :], cfg.variational, cfg.detach_target))
    variational = torch.cat(v_terms)
    mixup = torch.cat(r_terms) if r_terms else None
    return dallmi_objective(variational, mixup, cfg.lambda_mix)
