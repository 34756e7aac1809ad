"""Ops: the softpick function and softpick / softmax attention. Needs torch and triton only."""

from softpick.ops.attention import softmax_attention, softpick_attention
from softpick.ops.softpick import DEFAULT_EPS, softpick

__all__ = ["DEFAULT_EPS", "softmax_attention", "softpick", "softpick_attention"]
