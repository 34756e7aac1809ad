"""The paper's headline claims (arXiv 2504.20966), each checked against the reports of two models.

``claims(reports)`` states every claim the reports have numbers for, with both models' numbers and a
verdict ("holds here", "does not hold here", "cannot be tested here"): no attention sinks, lower
hidden-state kurtosis, sparse attention maps, quality parity and smaller losses under weight
quantization. ``softpick experiment`` puts them in its summary.
"""

from __future__ import annotations

from softpick.analysis.report import Report


def claims(reports: dict[str, Report], reference: str = "softmax", subject: str = "softpick") -> list[str]:
    """The paper's headline claims, each stated with this experiment's numbers."""
    if reference not in reports or subject not in reports:
        return []
    a, b = reports[subject], reports[reference]
    lines = []
    sink_a, sink_b = a.value("sink", "sink_rate"), b.value("sink", "sink_rate")
    if sink_a is not None and sink_b is not None:
        if sink_b == 0:
            verdict = f"cannot be tested here: {reference} forms no sinks at this scale either"
        else:
            verdict = "holds here" if sink_a == 0 else ("partly holds here" if sink_a < sink_b else "does not hold here")
        other_a, other_b = a.value("sink", "other_token_sink_rate"), b.value("sink", "other_token_sink_rate")
        other = ("" if other_a is None or other_b is None else
                 f" Sinks on other tokens (one token id holding > eps of a head's attention): {other_a:.1f}% vs {other_b:.1f}%.")
        lines.append(f"No attention sinks with softpick (paper: 0% vs a high rate): {subject} {sink_a:.1f}% vs "
                     f"{reference} {sink_b:.1f}% of layer-heads; {verdict}.{other}")
    kurt_a, kurt_b = a.value("activations", "max_kurtosis"), b.value("activations", "max_kurtosis")
    if kurt_a and kurt_b:
        verdict = "holds" if kurt_a < kurt_b / 2 else ("is weak" if kurt_a < kurt_b else "does not hold")
        lines.append(f"Lower hidden-state kurtosis (paper, 340M: 340 vs 33,510): max over layers {kurt_a:.1f} vs "
                     f"{kurt_b:.1f} (ratio {kurt_b / kurt_a:.1f}x); {verdict} here.")
    sp_a, sp_b = a.value("sparsity", "sparsity"), b.value("sparsity", "sparsity")
    if sp_a is not None and sp_b is not None:
        lines.append(f"Sparse attention maps (paper: 46.97%): {sp_a:.1f}% of causal weights <= 1e-5 vs {sp_b:.1f}% "
                     f"for {reference}; {'holds' if sp_a > sp_b + 10 else 'does not hold'} here.")
    ppl_a, ppl_b = a.value("perplexity", "perplexity"), b.value("perplexity", "perplexity")
    if ppl_a and ppl_b:
        lines.append(f"Quality parity at small scale (paper v1): validation perplexity {ppl_a:.3f} vs {ppl_b:.3f} "
                     f"({100 * (ppl_a / ppl_b - 1):+.1f}%).")
    qa, qb = (r.quantization_rows(finite_only=True) for r in (a, b))
    shared = sorted(set(qa) & set(qb), key=lambda mb: (mb[0], -mb[1]))
    if shared and ppl_a and ppl_b:
        cells, tally = [], {"less": 0, "more": 0, "tie": 0}
        for method, bits in shared:
            da, db = qa[(method, bits)] / ppl_a - 1, qb[(method, bits)] / ppl_b - 1
            tally["tie" if abs(da - db) < 1e-3 else "less" if da < db else "more"] += 1
            cells.append(f"{method} {bits}-bit {100 * da:+.1f}% vs {100 * db:+.1f}%")
        lines.append(f"Degrades less under weight quantization (paper: especially at low bits): perplexity increase "
                     f"{subject} vs {reference}: {'; '.join(cells)}; {subject} degrades less in {tally['less']}, "
                     f"more in {tally['more']}, the same (within 0.1 point) in {tally['tie']} of {len(shared)} settings.")
    return lines
