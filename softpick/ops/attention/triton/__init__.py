"""Triton attention kernels: the portable path (any CUDA GPU, and the CPU under ``TRITON_INTERPRET=1``).

- :mod:`.training` launches the training kernels (forward :mod:`.training_fwd`, backward
  :mod:`.training_bwd`): T_q == T_k, causal or full, GQA, varlen with ``cu_seqlens``.
- :mod:`.kv_cache` launches the KV-cache kernels (:mod:`.kv_cache_kernels`, forward only): decoding,
  chunked prefill, queries shorter than keys, padded batches, split-K over long caches.
"""
