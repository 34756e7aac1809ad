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
    from softpick.cli import main

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text(json.dumps({"model": {}, "surprise": {}}))
    assert main(["compare", str(REPORTS[0].parent), str(tmp_path / "bad"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "softpick compare: " in err and "surprise" in err
