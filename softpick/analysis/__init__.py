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
"""

from softpick.analysis.activations import compute_activation_stats
from softpick.analysis.evaluation import compute_lm_eval
from softpick.analysis.passkey import compute_passkey
from softpick.analysis.perplexity import compute_perplexity
from softpick.analysis.quantization import compute_quantization_study
from softpick.analysis.sink import compute_sink_rate
from softpick.analysis.sparsity import compute_sparsity

__all__ = [
    "compute_activation_stats",
    "compute_lm_eval",
    "compute_passkey",
    "compute_perplexity",
    "compute_quantization_study",
    "compute_sink_rate",
    "compute_sparsity",
]
