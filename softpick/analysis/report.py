"""Writing reports: report.json, report.md and PNG plots for one model, and side-by-side comparisons.

A report is the plain dict built by :mod:`softpick.analysis.cli`; non-finite numbers are stored as
null in JSON. Plots use matplotlib's Agg backend (no display needed); each per-layer plot overlays
one line per model, so the same functions draw one report and a comparison.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PER_LAYER_PLOTS = (
    # file name, section, key, title, y label, log scale
    ("sink_first_token_mass.png", "sink", "first_token_mass_per_layer", "Attention on the first token", "mean weight", False),
    ("sink_rate.png", "sink", "sink_rate_per_layer", "Sink rate per layer", "% of heads above eps", False),
    ("sparsity.png", "sparsity", "sparsity_per_layer", "Attention-map sparsity", "% of causal entries <= threshold", False),
    ("kurtosis.png", "activations", "kurtosis_per_layer", "Hidden-state kurtosis (Pearson)", "kurtosis", True),
    ("max_activation.png", "activations", "max_abs_per_layer", "Largest |hidden state|", "max |x|", True),
    ("max_to_median.png", "activations", "max_to_median_per_layer", "Largest / median |hidden state|", "ratio", True),
)


def clean(value):
    """A JSON-safe copy: non-finite floats become None, dict keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(clean(report), indent=2, allow_nan=False) + "\n")


def load_report(folder: str | Path) -> dict:
    """The report.json in ``folder``; FileNotFoundError names the missing file."""
    path = Path(folder) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `softpick analyze ... --out {folder}` first.")
    return json.loads(path.read_text())


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


def value(report: dict, section: str, key: str):
    """``report[section][key]``, or None when the section was not run or has no such key."""
    return (report.get(section) or {}).get(key)


def headline(report: dict) -> dict[str, float | None]:
    """The single numbers a reader compares first (None when a section was not run)."""
    return {
        "perplexity": value(report, "perplexity", "perplexity"),
        "sink rate (%)": value(report, "sink", "sink_rate"),
        "first-token attention (mean)": value(report, "sink", "first_token_mass"),
        "other-token sink rate (%)": value(report, "sink", "other_token_sink_rate"),
        "attention sparsity (%)": value(report, "sparsity", "sparsity"),
        "max kurtosis": value(report, "activations", "max_kurtosis"),
        "max abs activation": value(report, "activations", "max_abs"),
    }


def quantization_rows(report: dict, finite_only: bool = False) -> dict[tuple[str, int], float | None]:
    """(method, bits) -> perplexity of the report's quantization study: the one table of it that the
    markdown, the plots, the comparison, the demo and the experiment's claims all read. A perplexity
    that overflowed is None after JSON; ``finite_only`` leaves those out."""
    study = report.get("quantization") or {}
    rows = {(r["method"], int(r["bits"])): r["perplexity"] for r in study.get("results", [])}
    if finite_only:
        rows = {key: ppl for key, ppl in rows.items() if ppl is not None and math.isfinite(ppl)}
    return rows


def quantization_by_method(report: dict) -> dict[str, dict[str, float | None]]:
    """The same table nested for JSON: method -> bits (a string) -> perplexity."""
    table: dict[str, dict[str, float | None]] = {}
    for (method, bits), perplexity in quantization_rows(report).items():
        table.setdefault(method, {})[str(bits)] = perplexity
    return table


def quantization_cells(report: dict) -> dict[tuple[str, int], float | str | None]:
    """(method, bits) -> perplexity, or why there is none ("not supported", "not installed", "failed")."""
    study = report.get("quantization") or {}
    cells: dict[tuple[str, int], float | str | None] = {
        (s["method"], int(s["bits"])): s.get("status", "skipped") for s in study.get("skipped", [])}
    cells.update(quantization_rows(report))
    return cells


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


def plot_per_layer(series: dict[str, list], title: str, ylabel: str, path: Path, log: bool = False) -> None:
    """One line per label over layer index."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, values in series.items():
        xs = [i for i, v in enumerate(values) if v is not None]
        ax.plot(xs, [values[i] for i in xs], marker="o", markersize=3, label=label)
    if log and any(v is not None and v > 0 for values in series.values() for v in values):
        ax.set_yscale("log")
    ax.set(title=title, xlabel="layer", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, path, ax, legend=len(series) > 1)


def plot_head_heatmap(matrix: list[list[float]], title: str, path: Path) -> None:
    """Layers x heads heatmap (e.g. first-token attention per head)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set(title=title, xlabel="head", ylabel="layer")
    fig.colorbar(image, ax=ax)
    _save(fig, path)


def plot_quantization(reports: dict[str, dict], path: Path) -> None:
    """Perplexity against bits: one panel per method, one line per model, dashed unquantized level."""
    methods = sorted({m for r in reports.values() for (m, _) in quantization_rows(r)})
    if not methods:
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        values, all_bits = [], set()
        for i, (label, report) in enumerate(reports.items()):
            rows = {b: p for (m, b), p in quantization_rows(report).items() if m == method and p is not None}
            color = f"C{i}"
            bits = sorted(rows)
            ax.plot(bits, [rows[b] for b in bits], marker="o", color=color, label=label)
            base = (value(report, "quantization", "baseline") or {}).get("perplexity")
            if base is not None:
                ax.axhline(base, color=color, linestyle="--", linewidth=0.8)
                values.append(base)
            values += list(rows.values())
            all_bits |= set(bits)
        ax.set(title=method, xlabel="weight bits", ylabel="perplexity")
        ax.set_xticks(sorted(all_bits))
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Perplexity after weight-only quantization (dashed: unquantized)")
    _save(fig, path)


def plot_passkey(reports: dict[str, dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, report in reports.items():
        accuracy = value(report, "passkey", "accuracy") or {}
        lengths = sorted(int(k) for k in accuracy)
        ax.plot(lengths, [100 * accuracy[str(k)] for k in lengths], marker="o", label=label)
    ax.set(title="Passkey retrieval", xlabel="prompt tokens", ylabel="accuracy (%)", ylim=(-5, 105))
    _save(fig, path, ax, legend=len(reports) > 1)


def write_plots(reports: dict[str, dict], out: Path) -> list[str]:
    """Every plot the reports have data for; returns the file names written.

    Reports must have passed through JSON (string keys), as :func:`write_report` and
    :func:`load_report` ensure.
    """
    written = []
    for name, section, key, title, ylabel, log in PER_LAYER_PLOTS:
        series = {label: r[section][key] for label, r in reports.items() if value(r, section, key)}
        if series:
            plot_per_layer(series, title, ylabel, out / name, log)
            written.append(name)
    if any(quantization_rows(r) for r in reports.values()):
        plot_quantization(reports, out / "quantization.png")
        written.append("quantization.png")
    if any(value(r, "passkey", "accuracy") for r in reports.values()):
        plot_passkey(reports, out / "passkey.png")
        written.append("passkey.png")
    if len(reports) == 1:
        (label, report), = reports.items()
        per_head = value(report, "sink", "first_token_mass_per_head")
        if per_head:
            plot_head_heatmap(per_head, "Attention on the first token per head", out / "sink_heads.png")
            written.append("sink_heads.png")
    return written


# ---------------------------------------------------------------- markdown


def _model_section(report: dict) -> list[str]:
    model, settings = report["model"], report["settings"]
    lines = [f"# Analysis of `{model['path']}`", ""]
    lines += [f"- model: {model['class']} ({model['model_type']}), {model['num_layers']} layers, "
              f"{model['num_heads']} heads, {model['parameters']:,} parameters, attention {model.get('attention')}"]
    lines += [f"- data: {settings['data']}; {settings['num_samples']} samples of up to {settings['seq_len']} tokens "
              f"({settings['tokens']} tokens), batch {settings['batch_size']}, {settings['padding_side']} padding"]
    lines += [f"- device {settings['device']}, dtype {settings['dtype']}; "
              + ", ".join(f"{k} {v}" for k, v in settings["versions"].items())]
    return lines + [""]


def _layer_table(report: dict) -> list[str]:
    sink, sparsity, act = report.get("sink") or {}, report.get("sparsity") or {}, report.get("activations") or {}
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


def _other_token_sinks(report: dict) -> list[str]:
    sinks = value(report, "sink", "other_token_sinks")
    if not sinks:
        return []
    rows = [[e["layer"], e["head"], repr(e.get("token", e["token_id"])).replace("|", "\\|"), e["mass"]] for e in sinks]
    return ["## Sinks on other tokens (mean attention on one token id, first positions left out)", ""] + _table(
        ["layer", "head", "token", "mass"], rows) + [""]


def _top_activations(report: dict) -> list[str]:
    layers = value(report, "activations", "layers") or []
    if not layers:
        return []
    layer = max(layers, key=lambda l: l["max_abs"] or 0)
    rows = [[e["value"], repr(e.get("token", e["token_id"])).replace("|", "\\|"), e["sample"], e["position"], e["channel"]] for e in layer["top"]]
    return [f"## Largest activations (layer {layer['layer']})", ""] + _table(
        ["value", "token", "sample", "position", "channel"], rows) + [""]


def _quantization_section(report: dict) -> list[str]:
    study = report.get("quantization")
    if not study:
        return []
    rows = quantization_cells(report)
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


def _eval_sections(report: dict) -> list[str]:
    lines = []
    evaluation = report.get("lm_eval")
    if evaluation:
        lines += [f"## lm-evaluation-harness {evaluation['lm_eval_version']}", ""]
        rows = [[task, metric, value] for task, metrics in evaluation["results"].items() for metric, value in metrics.items()]
        lines += _table(["task", "metric", "value"], rows) + [""]
    passkey = report.get("passkey")
    if passkey:
        lines += [f"## Passkey retrieval ({passkey['trials']} prompts per length)", ""]
        lines += _table(["prompt tokens", "accuracy %"], [[k, 100 * v] for k, v in passkey["accuracy"].items()]) + [""]
    return lines


def write_markdown(report: dict, plots: list[str], path: Path) -> None:
    lines = _model_section(report)
    lines += ["## Summary", ""] + _table(["metric", "value"], [[k, v] for k, v in headline(report).items()]) + [""]
    act = report.get("activations") or {}
    lines += [f"Kurtosis: {act.get('kurtosis_definition', 'n/a')}. Sink eps {report['sink']['eps'] if report.get('sink') else 'n/a'}; "
              f"sparsity threshold {report['sparsity']['threshold'] if report.get('sparsity') else 'n/a'}. "
              "Padding never counts; sums are divided once, so batch size does not change the numbers.", ""]
    lines += (_layer_table(report) + _other_token_sinks(report) + _top_activations(report)
              + _quantization_section(report) + _eval_sections(report))
    for note in report.get("notes", []):
        lines.append(f"> {note}")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def write_report(report: dict, out: str | Path) -> list[Path]:
    """report.json, report.md and the plots in ``out`` (created); returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = json.loads(json.dumps(clean(report)))  # the same view of the data as a reloaded report.json
    write_json(report, out / "report.json")
    plots = write_plots({report["model"]["path"]: report}, out)
    write_markdown(report, plots, out / "report.md")
    return [out / "report.json", out / "report.md"] + [out / p for p in plots]


def write_comparison(reports: dict[str, dict], out: str | Path) -> list[Path]:
    """comparison.md (headline, per-layer and quantization tables) and overlaid plots in ``out``."""
    if len(reports) < 2:
        raise ValueError(f"compare needs at least two reports, got {len(reports)}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(reports)
    lines = ["# Comparison", ""]
    lines += _table(["metric", *labels], [[k] + [headline(r)[k] for r in reports.values()] for k in headline({})])
    lines += ["", "Models:"] + [f"- {label}: `{r['model']['path']}` ({r['model']['class']}, attention "
                                f"{r['model'].get('attention')}), data {r['settings']['data']}" for label, r in reports.items()]
    for section, key, title in (("sink", "first_token_mass_per_layer", "First-token attention per layer"),
                                ("sparsity", "sparsity_per_layer", "Sparsity % per layer"),
                                ("activations", "kurtosis_per_layer", "Kurtosis per layer")):
        series = [value(r, section, key) or [] for r in reports.values()]
        depth = max(len(s) for s in series)
        if depth:
            rows = [[i] + [s[i] if i < len(s) else None for s in series] for i in range(depth)]
            lines += ["", f"## {title}", ""] + _table(["layer", *labels], rows)
    quant = [quantization_cells(r) for r in reports.values()]
    keys = sorted({k for q in quant for k in q}, key=lambda k: (k[0], -k[1]))
    if keys:
        rows = [["unquantized", ""] + [(value(r, "quantization", "baseline") or {}).get("perplexity")
                                       for r in reports.values()]]
        rows += [[m, b] + [q.get((m, b)) for q in quant] for m, b in keys]
        lines += ["", "## Perplexity after quantization", ""] + _table(["method", "bits", *labels], rows)
    evals = [value(r, "lm_eval", "results") or {} for r in reports.values()]
    metrics = sorted({(t, m) for e in evals for t, ms in e.items() for m in ms})
    if metrics:
        rows = [[t, m] + [e.get(t, {}).get(m) for e in evals] for t, m in metrics]
        lines += ["", "## lm-evaluation-harness", ""] + _table(["task", "metric", *labels], rows)
    lengths = sorted({int(k) for r in reports.values() for k in (value(r, "passkey", "accuracy") or {})})
    if lengths:
        rows = [[n] + [(value(r, "passkey", "accuracy") or {}).get(str(n)) for r in reports.values()]
                for n in lengths]
        lines += ["", "## Passkey accuracy", ""] + _table(["prompt tokens", *labels], rows)
    plots = write_plots(reports, out)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    write_json({"reports": reports}, out / "comparison.json")
    return [out / "comparison.md", out / "comparison.json"] + [out / p for p in plots]
