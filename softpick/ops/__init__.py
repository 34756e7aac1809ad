"""Ops: the softpick function and attention (softpick, softmax, any :class:`AttentionSpec`). Needs torch and triton only."""

from softpick.ops.attention import AttentionSpec, attend, softmax_attention, softpick_attention
from softpick.ops.softpick import DEFAULT_EPS, softpick

__all__ = ["DEFAULT_EPS", "AttentionSpec", "attend", "softmax_attention", "softpick", "softpick_attention"]
