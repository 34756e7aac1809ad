"""analysis.claims: the paper's claims stated from two reports, with verdicts that follow the numbers."""

from softpick.analysis.claims import claims
from softpick.analysis.report import Report


def _report(sink_rate, kurtosis, sparsity, ppl, quant):
    return Report(sink={"sink_rate": sink_rate, "other_token_sink_rate": 0.0},
                  activations={"max_kurtosis": kurtosis}, sparsity={"sparsity": sparsity},
                  perplexity={"perplexity": ppl},
                  quantization={"results": [{"method": m, "bits": b, "perplexity": p} for (m, b), p in quant.items()]})


def test_claims_hold_or_fail_with_the_numbers():
    softpick = _report(0.0, 10.0, 80.0, 10.0, {("rtn", 4): 10.5, ("rtn", 2): None})
    softmax = _report(25.0, 300.0, 40.0, 10.2, {("rtn", 4): 11.0, ("rtn", 2): 30.0})
    lines = claims({"softpick": softpick, "softmax": softmax})
    assert len(lines) == 5
    sinks, kurtosis, sparsity, parity, quant = lines
    assert "softpick 0.0% vs softmax 25.0%" in sinks and "holds here" in sinks
    assert "10.0 vs 300.0" in kurtosis and "holds here" in kurtosis
    assert "80.0% of causal weights" in sparsity and "holds here" in sparsity
    assert "10.000 vs 10.200 (-2.0%)" in parity
    # the 2-bit row is left out: softpick's perplexity overflowed (None in JSON)
    assert "rtn 4-bit +5.0% vs +7.8%" in quant and "less in 1, more in 0" in quant and "of 1 settings" in quant

    flipped = claims({"softpick": softmax, "softmax": softpick})
    assert "cannot be tested here" in flipped[0] and "does not hold here" in flipped[1] + flipped[2]
    assert claims({"softpick": softpick}) == []


def test_quantization_table_views():
    report = _report(0.0, 1.0, 1.0, 1.0, {("rtn", 4): 10.5, ("rtn", 2): None, ("hqq", 4): 10.4})
    assert report.quantization_rows() == {("rtn", 4): 10.5, ("rtn", 2): None, ("hqq", 4): 10.4}
    assert report.quantization_rows(finite_only=True) == {("rtn", 4): 10.5, ("hqq", 4): 10.4}
    assert report.quantization_by_method() == {"rtn": {"4": 10.5, "2": None}, "hqq": {"4": 10.4}}
    assert Report().quantization_rows() == {}
