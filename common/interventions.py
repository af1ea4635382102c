"""Interventions of Sec 6.2. So far: the two-hot categorical output encoding."""
import torch
from torch import nn


class TwoHot(nn.Module):
    """Two-hot encoding of scalars on a fixed support of ``num_bins`` points in ``[vmin, vmax]`` (Sec 6.2).

    ``encode(y)`` puts the mass of each (clipped) scalar on its two neighbouring support points so that the
    expectation is ``y``; ``decode(logits)`` is the expectation of ``softmax(logits)``; ``loss`` is the
    cross-entropy between the logits and the encoded targets. A module, so its support moves with the network.
    """

    def __init__(self, vmin, vmax, num_bins):
        super().__init__()
        if not vmin < vmax or num_bins < 2:
            raise ValueError(f"TwoHot needs vmin < vmax and num_bins >= 2, got {vmin}, {vmax}, {num_bins}")
        self.vmin, self.vmax, self.num_bins = vmin, vmax, num_bins
        self.register_buffer("support", torch.linspace(vmin, vmax, num_bins))

    def encode(self, y):
        """``(...,)`` scalars to ``(..., num_bins)`` probabilities."""
        y = y.clamp(self.vmin, self.vmax)
        position = (y - self.vmin) / (self.vmax - self.vmin) * (self.num_bins - 1)
        lower = position.floor().clamp_max(self.num_bins - 2)
        upper_weight = (position - lower).unsqueeze(-1)
        lower_hot = nn.functional.one_hot(lower.long(), self.num_bins).to(y.dtype)
        upper_hot = nn.functional.one_hot(lower.long() + 1, self.num_bins).to(y.dtype)
        return lower_hot * (1 - upper_weight) + upper_hot * upper_weight

    def decode(self, logits):
        """``(..., num_bins)`` logits to ``(...,)`` expected values."""
        return logits.softmax(-1) @ self.support

    def loss(self, logits, y):
        """Cross-entropy to the two-hot encoding of ``y``, one value per scalar."""
        return -(self.encode(y) * logits.log_softmax(-1)).sum(-1)
