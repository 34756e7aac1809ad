"""Writing reports: report.json, report.md and PNG plots for one model, and side-by-side comparisons.

A report is a :class:`Report`, built by :func:`softpick.analysis.cli.analyze`; it has one writer
(:meth:`Report.write`: report.json, report.md, plots) and one reader (:meth:`Report.load`).
Non-finite numbers are stored as null in JSON. Plots use matplotlib's Agg backend (no display needed); each per-layer plot overlays
one line per model, so the same functions draw one report and a comparison.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from softpick.analysis.live import plot_live_metrics, training_rows  # noqa: E402
from softpick.errors import BadValue, MissingFile  # noqa: E402

PER_LAYER_PLOTS = (
    # file name, section, key, title, y label, y scale (see _scale_y)
    ("sink_first_token_mass.png", "sink", "first_token_mass_per_layer", "Attention on the first token",
     "mean weight on the first token", "fraction"),
    ("sink_rate.png", "sink", "sink_rate_per_layer", "Sink rate per layer", "heads above eps (%)", "percent"),
    ("sparsity.png", "sparsity", "sparsity_per_layer", "Attention-map sparsity", "causal entries <= threshold (%)",
     "percent"),
    ("kurtosis.png", "activations", "kurtosis_per_layer", "Hidden-state kurtosis (Pearson)", "kurtosis", "log"),
    ("max_activation.png", "activations", "max_abs_per_layer", "Largest |hidden state|", "max |x|", "log"),
    ("max_to_median.png", "activations", "max_to_median_per_layer", "Largest / median |hidden state|", "ratio", "log"),
)
LOG_SPAN = 10.0
"""A "log" axis is logarithmic only when its values span more than this factor; else linear."""


def clean(value):
    """A JSON-safe copy: non-finite floats become None, dict keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def json_text(data: dict) -> str:
    """``data`` as indented JSON text, non-finite floats as null: report.json's and comparison.json's format."""
    return json.dumps(clean(data), indent=2, allow_nan=False) + "\n"


@dataclass
class Report:
    """One model's analysis: each field is a top-level section of report.json, a JSON object (string
    keys, non-finite numbers as None) or None where that measurement was not run.

    ``model``: path, class, model_type, num_layers, num_heads, hidden_size, parameters, attention;
    ``settings``: data, num_samples, seq_len, tokens, batch_size, padding_side, device, dtype, seed,
    versions; ``perplexity``: loss, perplexity, tokens; ``sink``, ``sparsity``, ``activations``:
    headline numbers and per-layer lists; ``quantization``: baseline, results, skipped, group_size;
    ``lm_eval``: lm_eval_version, results (task -> metric -> value); ``passkey``: trials, accuracy
    (prompt tokens -> fraction); ``notes``: sentences for the reader.
    """

    model: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    perplexity: dict | None = None
    sink: dict | None = None
    sparsity: dict | None = None
    activations: dict | None = None
    quantization: dict | None = None
    lm_eval: dict | None = None
    passkey: dict | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """The report of a report.json's object; ValueError names a section this class does not know."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BadValue(f"report has unknown section(s) {unknown}; expected some of {known}.")
        return cls(**data)

    @classmethod
    def load(cls, folder: str | Path) -> Report:
        """The report.json in ``folder``; FileNotFoundError names the missing file."""
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise MissingFile(f"{path} does not exist: run `softpick analyze ... --out {folder}` first.")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ValueError as error:
            raise BadValue(f"{path}: {error}") from None

    def to_dict(self) -> dict:
        """The JSON object of report.json: sections in field order, those not run left out."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None or f.name in ("model", "settings", "notes")}

    def to_json(self) -> str:
        """The text of report.json."""
        return json_text(self.to_dict())

    def write(self, out: str | Path) -> list[Path]:
        """report.json, report.md and the plots in ``out`` (created); returns the paths written."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        text = self.to_json()
        (out / "report.json").write_text(text)
        report = Report.from_dict(json.loads(text))  # the same view of the data as a reloaded report.json
        plots = write_plots({report.model["path"]: report}, out)
        write_markdown(report, plots, out / "report.md")
        return [out / "report.json", out / "report.md"] + [out / p for p in plots]

    def value(self, section: str, key: str):
        """``section``'s ``key`` (e.g. ``("sink", "sink_rate")``), or None when the section was not run or has no such key."""
        return (getattr(self, section) or {}).get(key)

    def headline(self) -> dict[str, float | None]:
        """The single numbers a reader compares first (None when a section was not run)."""
        return {
            "perplexity": self.value("perplexity", "perplexity"),
            "sink rate (%)": self.value("sink", "sink_rate"),
            "first-token attention (mean)": self.value("sink", "first_token_mass"),
            "other-token sink rate (%)": self.value("sink", "other_token_sink_rate"),
            "attention sparsity (%)": self.value("sparsity", "sparsity"),
            "max kurtosis": self.value("activations", "max_kurtosis"),
            "max abs activation": self.value("activations", "max_abs"),
        }

    def quantization_rows(self, finite_only: bool = False) -> dict[tuple[str, int], float | None]:
        """(method, bits) -> perplexity of the quantization study: the one table of it that the
        markdown, the plots, the comparison, the demo and the experiment's claims all read. A
        perplexity that overflowed is None after JSON; ``finite_only`` leaves those out."""
        study = self.quantization or {}
        rows = {(r["method"], int(r["bits"])): r["perplexity"] for r in study.get("results", [])}
        if finite_only:
            rows = {key: ppl for key, ppl in rows.items() if ppl is not None and math.isfinite(ppl)}
        return rows

    def quantization_by_method(self) -> dict[str, dict[str, float | None]]:
        """The same table nested for JSON: method -> bits (a string) -> perplexity."""
        table: dict[str, dict[str, float | None]] = {}
        for (method, bits), perplexity in self.quantization_rows().items():
            table.setdefault(method, {})[str(bits)] = perplexity
        return table

    def quantization_cells(self) -> dict[tuple[str, int], float | str | None]:
        """(method, bits) -> perplexity, or why there is none ("not supported", "not installed", "failed")."""
        study = self.quantization or {}
        cells: dict[tuple[str, int], float | str | None] = {
            (s["method"], int(s["bits"])): s.get("status", "skipped") for s in study.get("skipped", [])}
        cells.update(self.quantization_rows())
        return cells

    def unquantized_perplexity(self) -> float | None:
        """The quantization study's baseline perplexity (None when the study was not run)."""
        return (self.value("quantization", "baseline") or {}).get("perplexity")


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


# ---------------------------------------------------------------- plots


def _save(fig, path: Path, ax=None, legend: bool = False) -> None:
    """Write a figure at 120 dpi and free it; with ``ax``, a light grid and (``legend``) a legend first."""
    if ax is not None:
        ax.grid(alpha=0.3)
        if legend:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plain(value: float, _position=None) -> str:
    """A tick label without an exponent or offset: 0.01, 2, 500, 2e+04."""
    return f"{value:g}"


def _log_axis(ax, axis: str = "y") -> None:
    """A log scale labelled 1, 2, 5, 10, 20, ... in plain numbers (no 10^x, no 3.01x10^0)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(_plain))
    target.set_minor_formatter(NullFormatter())


def _scale_y(ax, kind: str, values: list[float]) -> None:
    """The y axis of a measurement: "percent" 0-100, "fraction" 0-1, "log" (logarithmic when the values
    span more than LOG_SPAN, plain labels) or "linear"; never an offset like "+1.98e3"."""
    if kind == "percent":
        ax.set_ylim(-2, 102)
        ax.set_yticks(range(0, 101, 20))
    elif kind == "fraction":
        ax.set_ylim(-0.02, 1.02)
    elif kind == "log" and values and min(values) > 0 and max(values) / min(values) > LOG_SPAN:
        _log_axis(ax)
        return
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def plot_per_layer(series: dict[str, list], title: str, ylabel: str, path: Path, scale: str = "linear") -> None:
    """One line per label over layer index (integer ticks); ``scale`` as :func:`_scale_y`."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    finite = []
    for label, values in series.items():
        xs = [i for i, v in enumerate(values) if v is not None]
        ax.plot(xs, [values[i] for i in xs], marker="o", markersize=3, label=label)
        finite += [values[i] for i in xs]
    ax.set(title=title, xlabel="layer", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _scale_y(ax, scale, finite)
    _save(fig, path, ax, legend=len(series) > 1)


def plot_head_heatmap(matrix: list[list[float]], title: str, path: Path, label: str) -> None:
    """Layers x heads heatmap on 0-1 (e.g. first-token attention per head), integer ticks, a labelled colour bar."""
    fig, ax = plt.subplots(figsize=(6, 4))
    data = [[float("nan") if v is None else v for v in row] for row in matrix]
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set(title=title, xlabel="head", ylabel="layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=ax, label=label)
    _save(fig, path)


def plot_quantization(reports: dict[str, Report], path: Path) -> None:
    """Perplexity against bits: one panel per method, one line per model, dashed unquantized level."""
    methods = sorted({m for r in reports.values() for (m, _) in r.quantization_rows()})
    if not methods:
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(max(6.0, 4 * len(methods)), 3.8), squeeze=False)
    for ax, method in zip(axes[0], methods):
        values, all_bits = [], set()
        for i, (label, report) in enumerate(reports.items()):
            rows = {b: p for (m, b), p in report.quantization_rows().items() if m == method and p is not None}
            color = f"C{i}"
            bits = sorted(rows)
            ax.plot(bits, [rows[b] for b in bits], marker="o", color=color, label=label)
            base = report.unquantized_perplexity()
            if base is not None:
                ax.axhline(base, color=color, linestyle="--", linewidth=0.8)
                values.append(base)
            values += list(rows.values())
            all_bits |= set(bits)
        ax.set(title=method, xlabel="weight bits", ylabel="perplexity")
        ax.set_xticks(sorted(all_bits))
        _scale_y(ax, "log" if len(values) > 1 and min(values) > 0 and max(values) / min(values) > 20 else "linear",
                 values)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Perplexity after weight-only quantization\n(dashed: unquantized)", fontsize=10)
    _save(fig, path)


def plot_passkey(reports: dict[str, Report], path: Path) -> None:
    """Accuracy (%, 0-100) against prompt length; ticks at the lengths tried (log-2 spaced when they span 4x)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    all_lengths: set[int] = set()
    for label, report in reports.items():
        accuracy = report.value("passkey", "accuracy") or {}
        lengths = sorted(int(k) for k in accuracy)
        ax.plot(lengths, [100 * accuracy[str(k)] for k in lengths], marker="o", label=label)
        all_lengths |= set(lengths)
    ticks = sorted(all_lengths)
    if ticks and ticks[-1] / ticks[0] >= 4:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] * 0.5, ticks[0] * 1.5)
    ax.set(title="Passkey retrieval", xlabel="prompt tokens", ylabel="accuracy (%)", ylim=(-2, 102))
    ax.set_yticks(range(0, 101, 20))
    _save(fig, path, ax, legend=len(reports) > 1)


def write_plots(reports: dict[str, Report], out: Path) -> list[str]:
    """Every plot the reports have data for; returns the file names written.

    Reports must have passed through JSON (string keys), as :meth:`Report.write` and
    :meth:`Report.load` ensure.
    """
    written = []
    for name, section, key, title, ylabel, scale in PER_LAYER_PLOTS:
        series = {label: r.value(section, key) for label, r in reports.items() if r.value(section, key)}
        if series:
            plot_per_layer(series, title, ylabel, out / name, scale)
            written.append(name)
    if any(r.quantization_rows() for r in reports.values()):
        plot_quantization(reports, out / "quantization.png")
        written.append("quantization.png")
    if any(r.value("passkey", "accuracy") for r in reports.values()):
        plot_passkey(reports, out / "passkey.png")
        written.append("passkey.png")
    if len(reports) == 1:
        (label, report), = reports.items()
        per_head = report.value("sink", "first_token_mass_per_head")
        if per_head:
            plot_head_heatmap(per_head, "Attention on the first token per head", out / "sink_heads.png",
                              "mean attention weight on the first token")
            written.append("sink_heads.png")
    return written


# ---------------------------------------------------------------- markdown


def _model_section(report: Report) -> list[str]:
    model, settings = report.model, report.settings
    lines = [f"# Analysis of `{model['path']}`", ""]
    lines += [f"- model: {model['class']} ({model['model_type']}), {model['num_layers']} layers, "
              f"{model['num_heads']} heads, {model['parameters']:,} parameters, attention {model.get('attention')}"]
    trained = settings.get("trained_context_len")
    length = f"evaluated at up to {settings['seq_len']} tokens per sample" + (
        f" (trained at {trained})" if trained else " (training context unknown)")
    lines += [f"- data: {settings['data']}; {settings['num_samples']} samples, {length}; {settings['tokens']} tokens, "
              f"batch {settings['batch_size']}, {settings['padding_side']} padding"]
    lines += [f"- device {settings['device']}, dtype {settings['dtype']}; "
              + ", ".join(f"{k} {v}" for k, v in settings["versions"].items())]
    return lines + [""]


def _layer_table(report: Report) -> list[str]:
    sink, sparsity, act = report.sink or {}, report.sparsity or {}, report.activations or {}
    layers = act.get("layers") or []
    rows = []
    for i in range(len(sink.get("sink_rate_per_layer") or layers)):
        layer = layers[i] if i < len(layers) else {}
        rows.append([
            i,
            (sink.get("sink_rate_per_layer") or [None] * (i + 1))[i],
            (sink.get("first_token_mass_per_layer") or [None] * (i + 1))[i],
            (sparsity.get("sparsity_per_layer") or [None] * (i + 1))[i],
            layer.get("kurtosis"), layer.get("max_abs"), layer.get("max_to_median"),
        ])
    header = ["layer", "sink rate %", "first-token attn", "sparsity %", "kurtosis", "max abs", "max/median"]
    return ["## Per layer", ""] + _table(header, rows) + [""]


def _other_token_sinks(report: Report) -> list[str]:
    sinks = report.value("sink", "other_token_sinks")
    if not sinks:
        return []
    rows = [[e["layer"], e["head"], repr(e.get("token", e["token_id"])).replace("|", "\\|"), e["mass"]] for e in sinks]
    return ["## Sinks on other tokens (mean attention on one token id, first positions left out)", ""] + _table(
        ["layer", "head", "token", "mass"], rows) + [""]


def _top_activations(report: Report) -> list[str]:
    layers = report.value("activations", "layers") or []
    if not layers:
        return []
    layer = max(layers, key=lambda l: l["max_abs"] or 0)
    rows = [[e["value"], repr(e.get("token", e["token_id"])).replace("|", "\\|"), e["sample"], e["position"], e["channel"]] for e in layer["top"]]
    return [f"## Largest activations (layer {layer['layer']})", ""] + _table(
        ["value", "token", "sample", "position", "channel"], rows) + [""]


def _quantization_section(report: Report) -> list[str]:
    study = report.quantization
    if not study:
        return []
    rows = report.quantization_cells()
    methods = sorted({m for m, _ in rows})
    bits = sorted({b for _, b in rows}, reverse=True)
    lines = [f"## Quantization (weight-only, group size {study['group_size']}; unquantized perplexity "
             f"{_fmt(study['baseline']['perplexity'])})", ""]
    lines += _table(["method"] + [f"{b}-bit" for b in bits], [[m] + [rows.get((m, b)) for b in bits] for m in methods])
    if study["skipped"]:
        lines += ["", "Skipped:"] + [f"- {s['method']} {s['bits']}-bit: {s['reason']}" for s in study["skipped"]]
    lines += ["", "`rtn` is the plain-torch round-to-nearest baseline written in this package; `hqq`, `torchao` "
              "and `quanto` are the libraries' own quantizers.", ""]
    return lines


def _eval_sections(report: Report) -> list[str]:
    lines = []
    evaluation = report.lm_eval
    if evaluation:
        lines += [f"## lm-evaluation-harness {evaluation['lm_eval_version']}", ""]
        rows = [[task, metric, value] for task, metrics in evaluation["results"].items() for metric, value in metrics.items()]
        lines += _table(["task", "metric", "value"], rows) + [""]
    passkey = report.passkey
    if passkey:
        lines += [f"## Passkey retrieval ({passkey['trials']} prompts per length)", ""]
        lines += _table(["prompt tokens", "accuracy %"], [[k, 100 * v] for k, v in passkey["accuracy"].items()]) + [""]
    return lines


def write_markdown(report: Report, plots: list[str], path: Path) -> None:
    lines = _model_section(report)
    lines += ["## Summary", ""] + _table(["metric", "value"], [[k, v] for k, v in report.headline().items()]) + [""]
    act = report.activations or {}
    lines += [f"Kurtosis: {act.get('kurtosis_definition', 'n/a')}. Sink eps {report.sink['eps'] if report.sink else 'n/a'}; "
              f"sparsity threshold {report.sparsity['threshold'] if report.sparsity else 'n/a'}. "
              "Padding never counts; sums are divided once, so batch size does not change the numbers.", ""]
    lines += (_layer_table(report) + _other_token_sinks(report) + _top_activations(report)
              + _quantization_section(report) + _eval_sections(report))
    for note in report.notes:
        lines.append(f"> {note}")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def write_comparison(reports: dict[str, Report], out: str | Path) -> list[Path]:
    """comparison.md (headline, per-layer and quantization tables) and overlaid plots in ``out``."""
    if len(reports) < 2:
        raise BadValue(f"compare needs at least two reports, got {len(reports)}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(reports)
    lines = ["# Comparison", ""]
    lines += _table(["metric", *labels], [[k] + [r.headline()[k] for r in reports.values()] for k in Report().headline()])
    lines += ["", "Models:"] + [f"- {label}: `{r.model['path']}` ({r.model['class']}, attention "
                                f"{r.model.get('attention')}), data {r.settings['data']}" for label, r in reports.items()]
    for section, key, title in (("sink", "first_token_mass_per_layer", "First-token attention per layer"),
                                ("sparsity", "sparsity_per_layer", "Sparsity % per layer"),
                                ("activations", "kurtosis_per_layer", "Kurtosis per layer")):
        series = [r.value(section, key) or [] for r in reports.values()]
        depth = max(len(s) for s in series)
        if depth:
            rows = [[i] + [s[i] if i < len(s) else None for s in series] for i in range(depth)]
            lines += ["", f"## {title}", ""] + _table(["layer", *labels], rows)
    quant = [r.quantization_cells() for r in reports.values()]
    keys = sorted({k for q in quant for k in q}, key=lambda k: (k[0], -k[1]))
    if keys:
        rows = [["unquantized", ""] + [r.unquantized_perplexity()
                                       for r in reports.values()]]
        rows += [[m, b] + [q.get((m, b)) for q in quant] for m, b in keys]
        lines += ["", "## Perplexity after quantization", ""] + _table(["method", "bits", *labels], rows)
    evals = [r.value("lm_eval", "results") or {} for r in reports.values()]
    metrics = sorted({(t, m) for e in evals for t, ms in e.items() for m in ms})
    if metrics:
        rows = [[t, m] + [e.get(t, {}).get(m) for e in evals] for t, m in metrics]
        lines += ["", "## lm-evaluation-harness", ""] + _table(["task", "metric", *labels], rows)
    lengths = sorted({int(k) for r in reports.values() for k in (r.value("passkey", "accuracy") or {})})
    if lengths:
        rows = [[n] + [(r.value("passkey", "accuracy") or {}).get(str(n)) for r in reports.values()]
                for n in lengths]
        lines += ["", "## Passkey accuracy", ""] + _table(["prompt tokens", *labels], rows)
    plots = write_plots(reports, out)
    plots += plot_live_metrics({label: training_rows(r.model["path"]) for label, r in reports.items()}, out)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    (out / "comparison.json").write_text(json_text({"reports": {label: r.to_dict() for label, r in reports.items()}}))
    return [out / "comparison.md", out / "comparison.json"] + [out / p for p in plots]
