"""The paper's measurements of a trained causal LM, one module per measurement.

- :mod:`~softpick.analysis.sink` — sink rate and attention on the first token (``compute_sink_rate``)
- :mod:`~softpick.analysis.sparsity` — share of zero attention entries (``compute_sparsity``)
- :mod:`~softpick.analysis.activations` — kurtosis and massive activations (``compute_activation_stats``)
- :mod:`~softpick.analysis.perplexity` — perplexity (``compute_perplexity``)
- :mod:`~softpick.analysis.quantization` — weight-only PTQ study (``compute_quantization_study``)
- :mod:`~softpick.analysis.evaluation` — lm-evaluation-harness tasks (``compute_lm_eval``)
- :mod:`~softpick.analysis.passkey` — passkey retrieval (``compute_passkey``)

:mod:`~softpick.analysis.collect` runs the forward passes (the hooks and reductions of
:mod:`softpick.models.probes`, shared with the live metrics of training; one layer's attention map at a
time), :mod:`~softpick.analysis.live` plots those live metrics, :mod:`~softpick.analysis.data` reads and pads text, :mod:`~softpick.analysis.report` holds
the ``Report`` (one reader and one writer of report.json/report.md) and the plots,
:mod:`~softpick.analysis.cli` is ``softpick analyze`` (``analyze(model_dir, options) -> Report``) and
``softpick compare``.

The names below load on first use, so ``softpick analyze -h`` / ``compare -h`` / ``lm-eval -h`` import no torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "compute_activation_stats": "activations", "compute_lm_eval": "evaluation", "compute_passkey": "passkey",
    "compute_perplexity": "perplexity", "compute_quantization_study": "quantization",
    "compute_sink_rate": "sink", "compute_sparsity": "sparsity",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"softpick.analysis.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'softpick.analysis' has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
