"""Silence start-up and per-save messages that are known harmless, each by its exact source and text.

With the quantization extras installed, transformers imports hqq at start-up, which imports torchao; on a
machine without the matching CUDA build torchao logs "Failed to load .../torchao/_C_*.so" for its optional
GPU kernels, and its enums trigger torch's pytree notice that ``register_constant`` on Enum subclasses is
deprecated. Single-process DCP saves and loads warn that torch.distributed is not initialised, which is
exactly what a one-process run means. Nothing else is filtered: other messages from these libraries still
show.
"""

from __future__ import annotations

import logging
import warnings


class _DropTorchaoKernelLoad(logging.Filter):
    """torchao's "Failed to load <torchao/_C_*.so>" for optional compiled kernels."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Failed to load ") and "torchao" in message and "/_C" in message)


class _DropTorchaoEnumNotice(logging.Filter):
    """torch's pytree deprecation notice when torchao registers its Enum classes as constants."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "is an Enum subclass and is now natively supported" not in str(record.msg):
            return True
        cls = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not getattr(cls, "__module__", "").startswith("torchao")


def install() -> None:
    """Add the filters (idempotent); call before transformers is imported."""
    for name, flt in (("torchao", _DropTorchaoKernelLoad), ("torch.utils._pytree", _DropTorchaoEnumNotice)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, flt) for f in logger.filters):
            logger.addFilter(flt())
    # raised through torch's own decorator (torch/distributed/checkpoint/utils.py), so the filter is by text
    warnings.filterwarnings(
        "ignore", message=r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to "
        r"(save|load) in a single process", category=UserWarning,
    )
