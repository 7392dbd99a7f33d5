"""``attncluster plot``: training curves of one or more runs from their ``metrics.jsonl``, as one PNG.

``train`` appends one JSON record per log line (``{"type": "train", "step", "epoch", "loss", "hit_at_1", "perr",
"gap", ..., "lr"}``; ``top_1`` / ``top_5`` instead of the multi-label metrics for single-label runs) and one per
validation (``{"type": "valid", "step", "epoch", "gap", "hit_at_1", ..., "loss"}``, the streaming metrics over the
whole validation set). The figure has four panels against the optimizer step: loss, GAP (top-1 for single-label runs),
Hit@1 (top-5) and the learning rate; training records are lines, validation records are points, runs overlaid in
colours and line styles that stay apart in grey and for colour-blind readers.

A run still in progress is fine: a half-written last line is ignored. A resumed run appends records for steps it
had already logged before the checkpoint; the later records replace the earlier ones.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attncluster.errors import DataError

METRICS_FILE = "metrics.jsonl"
# Okabe & Ito's colour-blind-safe palette (dark to light), and distinct line styles / markers for grey prints.
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
# Panel -> (multi-label key, single-label key, axis label).
PANELS = [
    ("loss", "loss", "loss (per video)"),
    ("gap", "top_1", "GAP (top-1 if single-label)"),
    ("hit_at_1", "top_5", "Hit@1 (top-5 if single-label)"),
    ("lr", "lr", "learning rate"),
]


@dataclass
class RunMetrics:
    """The records of one run: per type (``train``, ``valid``) a list of dicts in step order."""

    label: str
    path: Path
    train: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    skipped: int = 0  # damaged lines (warned)
    partial_tail: bool = False  # the last line was half written (a run in progress)

    @property
    def multi_label(self) -> bool:
        records = self.train + self.valid
        return any("gap" in r for r in records) or not any("top_1" in r for r in records)

    def series(self, kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of ``key`` over the ``kind`` records that have it."""
        rows = [(r["step"], r[key]) for r in getattr(self, kind) if isinstance(r.get(key), (int, float))]
        if not rows:
            return np.zeros(0), np.zeros(0)
        steps, values = zip(*rows)
        return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def metrics_path(run: str | Path) -> Path:
    """``RUN_DIR/metrics.jsonl`` (or the file itself); DataError naming the run when there is none."""
    p = Path(run)
    path = p if p.is_file() else p / METRICS_FILE
    if not path.is_file():
        what = "no such folder" if not p.exists() else f"no {METRICS_FILE} in it"
        raise DataError(f"{run}: not a training run ({what}); expected a folder written by attncluster train")
    return path


def read_metrics(run: str | Path, label: str | None = None) -> RunMetrics:
    """Parse a run's ``metrics.jsonl``.

    A last line without its newline that does not parse is a record being written: ignored. Any other line that
    is not a JSON object is warned about on stderr and skipped. Records whose step is not above the previous
    record of the same type (a resumed run re-logging steps) replace the earlier records from that step on.

    Raises:
        DataError: no metrics file, or no train / valid record in it.
    """
    path = metrics_path(run)
    run_path = path.parent if path.name == METRICS_FILE else path
    out = RunMetrics(label=label or run_path.name or str(run_path), path=path)
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = n == len(lines)  # no newline after it: possibly still being written
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            if last:
                out.partial_tail = True
                continue
            out.skipped += 1
            print(f"warning: {path}: line {n}: skipped a damaged record (not a JSON object)", file=sys.stderr)
            continue
        kind = rec.get("type")
        if kind not in ("train", "valid") or not isinstance(rec.get("step"), (int, float)):
            continue  # other record types (none today) carry no curve
        rows = getattr(out, kind)
        while rows and rows[-1]["step"] >= rec["step"]:
            rows.pop()  # resumed: the re-run replaces what came after its checkpoint
        rows.append(rec)
    if not out.train and not out.valid:
        raise DataError(f"{path}: no training or validation records yet (a run that has not logged a step)")
    return out


def runs_figure(runs: list[RunMetrics]):
    """Four panels (loss, GAP / top-1, Hit@1 / top-5, learning rate) against step, all runs overlaid.

    Returns:
        A matplotlib Figure (Agg canvas).
    """
    from attncluster.explain import new_figure

    fig = new_figure(11.0, 7.0)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (multi_key, single_key, title) in zip(axes, PANELS):
        for i, run in enumerate(runs):
            key = multi_key if run.multi_label else single_key
            colour, style = COLOURS[i % len(COLOURS)], LINESTYLES[i % len(LINESTYLES)]
            marker = MARKERS[i % len(MARKERS)]
            s, v = run.series("train", key)
            if len(s):
                ax.plot(s, v, color=colour, linestyle=style, linewidth=1.3, label=f"{run.label} (train batches)")
            s, v = run.series("valid", key)
            if len(s):  # hollow markers: points of overlaid runs at the same step stay visible
                ax.plot(s, v, color=colour, linestyle="none", marker=marker, markersize=7, markerfacecolor="none",
                        markeredgewidth=1.6, label=f"{run.label} (validation)")
        ax.set_ylabel(title)
        ax.grid(True, color="0.9")
        if multi_key == "lr":
            lrs = [v for r in runs for v in r.series("train", "lr")[1] if v > 0]
            if lrs and max(lrs) / min(lrs) > 20:
                ax.set_yscale("log")
            if ax.get_yscale() == "linear":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes[2:]:
        ax.set_xlabel("step (optimizer updates)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # runs with no loss records still get a legend entry
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    # One column per run (legend entries fill column by column: a run's train line above its validation points).
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, min(4, len(runs))), fontsize=9,
               frameon=False)
    progress = [r.label for r in runs if r.partial_tail]
    fig.suptitle("training curves" + (f" (in progress: {', '.join(progress)})" if progress else ""), fontsize=11)
    return fig


def plot_runs(run_dirs: list[str | Path], output: str | Path = "runs.png", labels: list[str] | None = None,
              log=print) -> Path:
    """The ``plot`` verb: read every run's ``metrics.jsonl`` and write the overlaid curves to ``output`` (PNG).

    Args:
        run_dirs: run folders (or their ``metrics.jsonl``).
        output: image path (.png).
        labels: legend names, one per run (default: folder names, made unique with their parents).
    """
    from attncluster.errors import ConfigError
    from attncluster.explain import save_figure

    if labels is not None and len(labels) != len(run_dirs):
        raise ConfigError(f"--label given {len(labels)} times for {len(run_dirs)} runs; give one per run or none")
    if Path(output).suffix.lower() != ".png":
        raise ConfigError(f"--output {output}: plot writes a PNG; name the file .png")
    names = labels or _default_labels(run_dirs)
    runs = [read_metrics(d, name) for d, name in zip(run_dirs, names)]
    fig = runs_figure(runs)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, Path(output), dpi=110)
    log(f"plot: {len(runs)} run{'s' if len(runs) > 1 else ''} -> {output}")
    return Path(output)


def _default_labels(run_dirs: list[str | Path]) -> list[str]:
    """The last two parts of each run folder's path (``runs/yt8m``, ``quickstart/train``)."""
    paths = [Path(d).resolve() if not Path(d).is_file() else Path(d).resolve().parent for d in run_dirs]
    return ["/".join(p.parts[-2:]) for p in paths]


__all__ = ["RunMetrics", "plot_runs", "read_metrics", "runs_figure"]
