"""Model FLOPs of training steps, from the shapes the forwards actually ran on (for MFU).

A transformer training step costs 6 FLOPs per weight of a linear layer per row it multiplies
(2 forward, 4 backward: every token in the encoder, one row per sequence in the pooler and head),
plus 12 x layers x hidden x (padded) length per token for the attention scores and their
weighted sum (PaLM's accounting, Chowdhery et al. 2022, appendix B). Tokens are the padded ones
the hardware computes; embedding lookups, norms and activations count nothing. Which linear
weights apply per token and which per sequence is read off two tiny probe forwards, so timed
forwards carry one cheap shape hook and nothing per layer. tests/unit/test_flops.py checks the
count against torch's FlopCounterMode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dallmi_core.model import unwrap


@dataclass(frozen=True)
class FlopModel:
    per_token: int  # linear weights every token goes through
    per_sequence: int  # linear weights applied once per sequence (pooler, classifier)
    layers: int
    hidden: int

    def training_flops(self, batch: int, length: int) -> float:
        """Forward + backward FLOPs of one forward over `batch` sequences padded to `length`."""
        linear = self.per_token * batch * length + self.per_sequence * batch
        return 6.0 * linear + 12.0 * self.layers * self.hidden * batch * length * length


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
    """Records (batch, padded length) of every forward of `model` while attached."""

    def __init__(self, model: nn.Module):
        self.shapes: list[tuple[int, int]] = []
        self._handle = unwrap(model).register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs) -> None:
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        if inputs is None and args:
            inputs = args[0]
        if isinstance(inputs, torch.Tensor):
            self.shapes.append((int(inputs.shape[0]), int(inputs.shape[1])))

    def reset(self) -> None:
        self.shapes.clear()

    def training_flops(self, flop_model: FlopModel) -> float:
        return sum(flop_model.training_flops(batch, length) for batch, length in self.shapes)

    def close(self) -> None:
        self._handle.remove()
