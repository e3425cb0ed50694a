"""Model FLOPs of training steps, from the shapes the forwards actually ran on (for MFU).

A transformer training step costs 6 FLOPs per weight of a linear layer per row it multiplies
(2 forward, 4 backward: every token in the encoder, one row per sequence in the pooler and head),
plus 12 x layers x hidden x length per token for the attention scores and their weighted sum
(PaLM's accounting, Chowdhery et al. 2022, appendix B); embedding lookups, norms and activations
count nothing. Two counts: hardware FLOPs over the padded tokens the hardware computes, and model
FLOPs over the real (attention mask 1) tokens only, the work the model needs; padding is their gap. Which linear
weights apply per token and which per sequence is read off two tiny probe forwards, so timed
forwards carry one cheap shape hook and nothing per layer. tests/unit/test_flops.py checks the
count against torch's FlopCounterMode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dallmi_core.modeling.model import unwrap


@dataclass(frozen=True)
class FlopModel:
    per_token: int  # linear weights every token goes through
    per_sequence: int  # linear weights applied once per sequence (pooler, classifier)
    layers: int
    hidden: int

    def training_flops(self, batch: int, length: int) -> float:
        """Forward + backward hardware FLOPs of one forward over `batch` sequences padded to `length`."""
        return self.flops_of(batch, batch * length, batch * length * length)

    def flops_of(self, sequences: int, tokens: int, squared_lengths: int) -> float:
        """Forward + backward FLOPs of `sequences` holding `tokens` in all (sum of length^2: `squared_lengths`)."""
        linear = self.per_token * tokens + self.per_sequence * sequences
        return 6.0 * linear + 12.0 * self.layers * self.hidden * squared_lengths


def flop_model(model: nn.Module) -> FlopModel:
    """Count the rows each nn.Linear multiplies in forwards of length 4 and 8: the difference is
    the per-token part, the rest the per-sequence part."""
    bare = unwrap(model)
    rows_x_weights = [0]

    def count(module: nn.Linear, args) -> None:
        rows_x_weights[0] += args[0].numel() // module.in_features * module.weight.numel()

    handles = [m.register_forward_pre_hook(count) for m in bare.modules() if isinstance(m, nn.Linear)]
    device = next(bare.parameters()).device
    counts = []
    try:
        with torch.no_grad():
            for length in (4, 8):
                rows_x_weights[0] = 0
                ids = torch.ones((1, length), dtype=torch.long, device=device)
                bare(input_ids=ids, attention_mask=torch.ones_like(ids))
                counts.append(rows_x_weights[0])
    finally:
        for handle in handles:
            handle.remove()
    per_token = (counts[1] - counts[0]) // 4
    config = bare.config
    return FlopModel(
        per_token=per_token,
        per_sequence=counts[0] - 4 * per_token,
        layers=int(getattr(config, "num_hidden_layers", 0) or 0),
        hidden=int(getattr(config, "hidden_size", 0) or 0),
    )


class ShapeRecorder:
    """Counts every forward of `model` while attached (a hook, never a formula), and records each
    one's (batch, padded length) and its real tokens (from the attention mask)."""

    def __init__(self, model: nn.Module):
        self.forwards = 0
        self.shapes: list[tuple[int, int]] = []
        self.real: list[tuple[int, int]] = []  # per forward: (real tokens, sum of real length^2)
        self._handle = unwrap(model).register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs) -> None:
        self.forwards += 1
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        if inputs is None and args:
            inputs = args[0]
        if not isinstance(inputs, torch.Tensor):
            return
        batch, length = int(inputs.shape[0]), int(inputs.shape[1])
        self.shapes.append((batch, length))
        mask = kwargs.get("attention_mask")
        lengths = mask.sum(dim=1) if isinstance(mask, torch.Tensor) else torch.full((batch,), length)
        self.real.append((int(lengths.sum()), int((lengths.long() ** 2).sum())))

    def reset(self) -> None:
        self.forwards = 0
        self.shapes.clear()
        self.real.clear()

    def training_flops(self, flop_model: FlopModel) -> float:
        """Hardware FLOPs: the padded tokens."""
        return sum(flop_model.training_flops(batch, length) for batch, length in self.shapes)

    def model_training_flops(self, flop_model: FlopModel) -> float:
        """Model FLOPs: the real tokens only."""
        return sum(
            flop_model.flops_of(batch, tokens, squares)
            for (batch, _), (tokens, squares) in zip(self.shapes, self.real, strict=True)
        )

    def close(self) -> None:
        self._handle.remove()
