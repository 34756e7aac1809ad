"""analysis.report.Report: one reader and one writer for report.json, compatible with the reports in experiments/."""

import json
from pathlib import Path

import pytest

from softpick.analysis.report import Report

ROOT = Path(__file__).resolve().parents[2]
REPORTS = sorted(ROOT.glob("experiments/*/*/analysis/report.json"))


def test_the_repository_has_reports_to_check():
    assert len(REPORTS) >= 2, "experiments/*/*/analysis/report.json: the compatibility tests below need them"


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: str(p.relative_to(ROOT / "experiments").parent.parent))
def test_a_stored_report_loads_and_writes_back_byte_for_byte(path):
    report = Report.load(path.parent)
    assert report.model["path"] and report.perplexity["perplexity"] > 0
    assert report.to_json() == path.read_text()


def test_a_report_round_trips_through_write_and_load(tmp_path):
    """load -> write (report.json, report.md, plots) -> load gives the same report, passkey section included."""
    path = next(p for p in REPORTS if "passkey" in json.loads(p.read_text()))
    report = Report.load(path.parent)
    written = report.write(tmp_path)
    assert Report.load(tmp_path) == report
    assert (tmp_path / "report.json").read_bytes() == path.read_bytes()
    assert {p.name for p in written} >= {"report.json", "report.md", "quantization.png", "passkey.png"}
    assert "## Passkey retrieval" in (tmp_path / "report.md").read_text()


def test_sections_not_run_are_left_out_and_non_finite_numbers_become_null():
    report = Report(model={"path": "m"}, settings={}, perplexity={"loss": float("nan"), "perplexity": float("inf")})
    data = json.loads(report.to_json())
    assert list(data) == ["model", "settings", "perplexity", "notes"]
    assert data["perplexity"] == {"loss": None, "perplexity": None}
    assert Report.from_dict(data).quantization is None and Report.from_dict(data).headline()["max kurtosis"] is None


def test_an_unknown_section_or_a_missing_file_is_named(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"model": {}, "settings": {}, "surprise": {}}))
    with pytest.raises(ValueError, match=r"report.json: report has unknown section\(s\) \['surprise'\]"):
        Report.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Report.load(tmp_path / "missing")


def test_compare_names_a_report_it_cannot_read(tmp_path, capsys):
    from softpick.analysis.cli import compare_main

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text(json.dumps({"model": {}, "surprise": {}}))
    assert compare_main([str(REPORTS[0].parent), str(tmp_path / "bad"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "softpick compare: error:" in err and "surprise" in err


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept open (their _save is replaced)."""
    import matplotlib.pyplot as plt

    from softpick.analysis import report as report_mod

    drawn = {}
    monkeypatch.setattr(report_mod, "_save", lambda fig, path, ax=None, legend=False: drawn.__setitem__(path.name, fig))
    yield drawn
    for fig in drawn.values():
        plt.close(fig)


def _labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_plots_are_readable(figures, tmp_path):
    """Integer layer/head ticks, a labelled colour bar, percentages on 0-100 (also when all are 0), plain
    labels on log axes, no offset, and a one-length passkey plot ticked at that length only."""
    import matplotlib

    matplotlib.use("Agg")
    layers = 12
    report = Report(
        model={"path": "m"}, settings={},
        sink={"sink_rate_per_layer": [0.0] * layers, "first_token_mass_per_layer": [0.01] * layers,
              "first_token_mass_per_head": [[0.1 * h for h in range(4)] for _ in range(layers)]},
        sparsity={"sparsity_per_layer": [0.0] * layers},
        activations={"kurtosis_per_layer": [3 * 1.8**i for i in range(layers)],
                     "max_abs_per_layer": [0.1 * 2.2**i for i in range(layers)],
                     "max_to_median_per_layer": [5.5 + 0.1 * i for i in range(layers)]},
        quantization={"baseline": {"perplexity": 1981.74}, "group_size": 64, "skipped": [],
                      "results": [{"method": "rtn", "bits": b, "perplexity": 1981.5 + 0.1 * b} for b in (8, 4, 2)]},
        passkey={"trials": 2, "accuracy": {"48": 0.0}},
    )
    from softpick.analysis.report import write_plots

    written = write_plots({"m": Report.from_dict(json.loads(report.to_json()))}, tmp_path)
    assert set(written) == set(figures)
    for name, fig in figures.items():
        fig.canvas.draw()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                labels = _labels(axis)
                assert not any("times" in t or "^" in t or "e+0" in t for t in labels), (name, labels)
                assert not axis.get_offset_text().get_text(), (name, axis.get_offset_text().get_text())
    heat, bar = figures["sink_heads.png"].axes
    for axis, count in ((heat.xaxis, 4), (heat.yaxis, layers)):
        ticks = [t for t in axis.get_ticklocs() if -0.5 <= t <= count - 0.5]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert bar.get_ylabel() == "mean attention weight on the first token"
    for name in ("sink_rate.png", "sparsity.png"):  # all zeros: still a 0-100 axis
        ax = figures[name].axes[0]
        assert ax.get_ylim() == (-2, 102) and "(%)" in ax.get_ylabel()
    assert all(float(t).is_integer() for t in figures["sink_rate.png"].axes[0].get_xticks())
    kurtosis = figures["kurtosis.png"].axes[0]
    assert kurtosis.get_yscale() == "log" and {"5", "10", "100", "1000"} <= set(_labels(kurtosis.yaxis))
    assert figures["max_to_median.png"].axes[0].get_yscale() == "linear"  # 5.5 to 6.6: not worth a log axis
    passkey = figures["passkey.png"].axes[0]
    assert _labels(passkey.xaxis) == ["48"] and passkey.get_ylim() == (-2, 102)
