"""A flame-compatible trainer on torch.distributed (``softpick train``, ``softpick convert``).

Read in this order: ``config.py`` (every flag, with help), ``trainer.py`` (build steps and the loop),
``data.py`` (datasets -> tokens -> windows or varlen rows, resumable), ``parallel.py`` (degrees, mesh,
TP / AC / compile / FSDP2 / DDP), ``checkpoint.py`` (DCP, atomic saves, HF export), ``optim.py``
(AdamW, warmup-stable-decay schedules), ``metrics.py`` (MFU, logging, profiling), ``convert.py``.
This package imports ``softpick.models`` and ``softpick.corpus``, never ``softpick.analysis``.
"""
