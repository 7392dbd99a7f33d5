"""``attncluster explain``: which frames each attention unit of a trained model looks at, per video.

For every video it writes

* ``ID.json``: the top-k classes with names; per modality and unit the attention weights over the sampled frames
  (exactly the weights the forward pass pools with, :meth:`AttentionCluster.attention_weights`); each sampled
  frame's index in the original video and its timestamp in seconds; the attention summed over units; and how
  diverse the units are (:func:`diversity`);
* ``ID.png``: per modality the summed attention over time above a unit x time heatmap, the top classes in the
  title and, for decoded videos, a strip of thumbnails of the most-attended frames (:func:`explain_figure`);
* ``index.html`` (once): a static page listing every video, its top classes, its true labels (when the data has
  them; with names when known, each marked when it is among the top classes) and its figure.

Every file is written through the one writer (:func:`attncluster.outputs.atomic_output`): whole or not at all, and
a full disk is one error naming the file.

Frames are sampled as ``eval`` samples them (stratum centres, :func:`attncluster.data.sampling.sample_indices`).
Videos are streamed: memory and time per video do not grow with the number of videos.

Timestamps. Decoded videos (``--videos``) carry their real presentation times. For feature shards (``--data``) a
frame's timestamp is its index in the record divided by ``fps``: YouTube-8M frame-level features are extracted at
1 frame per second, so by default frame ``i`` is second ``i``.
"""

from __future__ import annotations

import contextlib

import hashlib
import html
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from attncluster.config import Config
from attncluster.errors import ConfigError, DataError
from attncluster.outputs import atomic_output, atomic_write_text, remove_stale, target_of_temporary

THUMBNAILS = 6  # most-attended frames shown with --videos
CMAP = "viridis"  # perceptually uniform, readable in grey and with colour-blindness
DATA_TIMING = ("timestamp_s = frame_index / fps with fps = {fps:g} frames/s (YouTube-8M frame-level features are "
               "extracted at 1 frame per second)")
VIDEO_TIMING = "timestamp_s is the decoded frame's presentation time; frame_index its index in the decoded stream"
DEFINITIONS = {
    "summed": "per sampled frame, the attention summed over the cluster's units (sums to the number of units)",
    "overlap": "mean over unit pairs (i, j) of sum_f min(w_i[f], w_j[f]): 1 = all units attend alike, 0 = to "
               "disjoint frames (null with one unit)",
    "effective_frames": "exp(entropy) of the summed attention normalised to 1: how many distinct frames the "
                        "cluster effectively looks at (1 .. distinct_frames)",
    "effective_frames_per_unit": "exp(entropy) of each unit's attention",
    "frames": "diversity measures treat a frame sampled twice (videos shorter than seg_num) as one frame",
    "segments": "per top-3 class, the spans where the model's score on a sliding window of the sampled frames "
                "(segment_window seconds, at least 3 frames, one frame's step) is >= 0.5, as 'attncluster watch' "
                "reports events; the figure shades them above the summed attention",
}


# ----------------------------------------------------------------------------------------------------------------
# Numbers


def merge_repeats(frame_index: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add up the weights of sampled positions that are the same frame (videos shorter than seg_num).

    Args:
        frame_index: (L,) non-decreasing frame index of each sampled position.
        weights: (L, ...) weights per position.

    Returns:
        (distinct frame indices (D,), summed weights (D, ...)).
    """
    frames, inverse = np.unique(frame_index, return_inverse=True)
    out = np.zeros((len(frames), *weights.shape[1:]), dtype=np.float64)
    np.add.at(out, inverse.reshape(-1), weights.astype(np.float64))
    return frames, out


def _effective_number(p: np.ndarray) -> float:
    """exp(entropy) of a distribution p (renormalised to 1), with 0 log 0 = 0."""
    p = p / p.sum()
    nz = p[p > 0]
    return float(math.exp(-(nz * np.log(nz)).sum()))


def diversity(weights: np.ndarray, frame_index: np.ndarray) -> dict[str, Any]:
    """How differently the units of one cluster attend (see ``DEFINITIONS``).

    Args:
        weights: (L, C) attention of C units over L sampled frames, each column summing to 1.
        frame_index: (L,) the frame each position samples; repeated frames are merged first.

    Returns:
        ``overlap`` (float in [0, 1], None for one unit), ``effective_frames`` (float),
        ``effective_frames_per_unit`` (C floats) and ``distinct_frames`` (int).
    """
    _, w = merge_repeats(frame_index, weights)  # (D, C)
    c = w.shape[1]
    if c > 1:
        mins = [np.minimum(w[:, i], w[:, j]).sum() for i in range(c) for j in range(i + 1, c)]
        overlap = float(np.mean(mins))
    else:
        overlap = None
    return {
        "overlap": overlap,
        "effective_frames": _effective_number(w.sum(axis=1)),
        "effective_frames_per_unit": [_effective_number(w[:, i]) for i in range(c)],
        "distinct_frames": int(w.shape[0]),
    }


def video_record(vid: str, attention: Mapping[str, np.ndarray], frame_index: np.ndarray, timestamps: np.ndarray,
                 scores: np.ndarray, top_k: int, names: Sequence[str] | None, num_frames: int,
                 timing: str, labels: Sequence[int] | None = None) -> dict[str, Any]:
    """The ``ID.json`` content of one video.

    Args:
        vid: video id.
        attention: modality -> (L, C_m) float32 attention weights (softmax over L per unit).
        frame_index: (L,) index of each sampled frame in the original video.
        timestamps: (L,) seconds.
        scores: (num_classes,) per-class scores.
        top_k: classes to list.
        names: class names, or None.
        num_frames: frames the video has (before sampling).
        timing: how the timestamps were obtained.
        labels: the video's true labels when the data has them.
    """
    order = np.argsort(-scores, kind="stable")[:top_k]
    top = [{"class": int(k), "name": names[int(k)] if names is not None else None, "score": float(scores[k])}
           for k in order]
    modalities = {}
    for m, w in attention.items():
        modalities[m] = {
            "units": [[float(x) for x in w[:, c]] for c in range(w.shape[1])],  # (C, L): float32 values, exact
            "summed": [float(x) for x in w.astype(np.float64).sum(axis=1)],
            **diversity(w, frame_index),
        }
    record = {
        "id": vid,
        "num_frames": int(num_frames),
        "top_classes": top,
        "frames": {"frame_index": [int(i) for i in frame_index], "timestamp_s": [float(t) for t in timestamps]},
        "timing": timing,
        "attention": modalities,
        "definitions": DEFINITIONS,
    }
    if labels is not None:
        record["labels"] = [{"class": int(k), "name": names[int(k)] if names is not None else None} for k in labels]
    return record


def attention_batch(model, features: Mapping[str, torch.Tensor], loss: str,
                    precision: str = "fp32") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Attention weights and scores of a batch, under the same autocast as prediction.

    Args:
        model: an ``AttentionCluster`` in eval mode.
        features: modality -> (N, L, F) float tensors on the model's device.
        loss: ``bce`` or ``ce`` (sigmoid or softmax scores).
        precision: ``train.precision`` (autocast dtype).

    Returns:
        (modality -> (N, L, C) float32 arrays, (N, num_classes) float32 scores).
    """
    from attncluster.inference import autocast_for, predict_scores

    device = next(model.parameters()).device
    with torch.no_grad(), autocast_for(device, precision):
        weights = model.attention_weights(features)
        logits = model(features)
    return ({m: w.float().cpu().numpy() for m, w in weights.items()},
            predict_scores(logits, loss).cpu().numpy())


# ----------------------------------------------------------------------------------------------------------------
# Figures


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("explain and plot draw with matplotlib; install the plot extra: "
                          "pip install 'attncluster[plot]'") from None
    return matplotlib


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no display, no pyplot global state: freed when dropped)."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


SEGMENT_COLORS = ("#0072B2", "#009E73", "#CC79A7")  # the top 3 classes' predicted segments


def predicted_segments(model, cfg: Config, feats: Mapping[str, torch.Tensor], timestamps, top, names,
                       threshold: float = 0.5, window: float = 10.0) -> list[dict[str, Any]]:
    """The segments of the ``top`` classes where the model's score over a sliding window (``window`` seconds, at
    least 3 sampled frames, one frame's step) is at or above ``threshold``: ``watch``'s events read offline
    (``attncluster.watch.segments``), as ``[{"class", "name", "rank", "start", "end", "score"}]``."""
    from attncluster.inference import predict_scores
    from attncluster.watch import segments

    t = np.asarray(timestamps, dtype=np.float64)
    step = float(np.median(np.diff(t))) if len(t) > 1 and np.median(np.diff(t)) > 0 else 1.0

    @torch.no_grad()
    def score(x):
        dev = next(iter(feats.values())).device
        logits = model({m: torch.as_tensor(a).to(dev) for m, a in x.items()})
        return predict_scores(logits, cfg.train.loss).cpu().numpy()

    rank = {int(c["class"]): r for r, c in enumerate(top)}
    events = segments(score, {m: x.cpu().numpy() for m, x in feats.items()}, t, window=max(window, 3 * step),
                      period=step, threshold=threshold, classes=list(rank))
    return [{"class": e.cls, "name": names[e.cls] if names is not None else None, "rank": rank[e.cls],
             "start": round(e.start, 3), "end": round(e.end, 3), "score": round(e.score, 6)} for e in events]


def _edges(t: np.ndarray) -> np.ndarray:
    """Cell edges of increasing timestamps: a frame's cell runs from its timestamp to the next frame's (the last one
    as long as the one before it, a lone frame 1 s), as a 1 fps feature covers its second. Segments are drawn as
    ``[start, end)`` seconds on the same axis, so segment [0, 5) covers exactly the cells of frames 0-4 (centred
    cells put the first frame at -0.5 s and shifted every segment half a frame from its frames)."""
    t = np.asarray(t, dtype=np.float64)
    step = t[-1] - t[-2] if len(t) > 1 else 1.0
    return np.concatenate([t, [t[-1] + step]])


def _short(text: str, n: int = 32) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def figure_arrays(record: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """What :func:`explain_figure` draws for each modality: the distinct frames' timestamps (D,), their summed
    attention (D,) and the unit x frame weights (C, D) (a frame sampled twice shows its total)."""
    frame_index = np.asarray(record["frames"]["frame_index"])
    timestamps = np.asarray(record["frames"]["timestamp_s"], dtype=np.float64)
    out = {}
    for m, a in record["attention"].items():
        w = np.asarray(a["units"], dtype=np.float64).T  # (L, C)
        frames, merged = merge_repeats(frame_index, w)
        first = np.searchsorted(frame_index, frames)  # position of each distinct frame's first sample
        out[m] = {"time": timestamps[first], "summed": merged.sum(axis=1), "units": merged.T}
    return out


def explain_figure(record: Mapping[str, Any], thumbnails: Sequence[tuple[float, np.ndarray]] | None = None):
    """One video's figure: per modality the summed attention over time above a unit x time heatmap.

    Args:
        record: a :func:`video_record` (id, top classes, frames, attention).
        thumbnails: optional (timestamp seconds, uint8 (H, W, 3) image) of the most-attended frames, in time order.

    Returns:
        A matplotlib Figure (Agg canvas); the caller saves and drops it.
    """
    arrays = figure_arrays(record)
    top = record["top_classes"][:3]
    label = ", ".join(f"{_short(c['name'] or 'class ' + str(c['class']))} ({c['score']:.2f})" for c in top)
    rows, ratios = [], []
    if thumbnails:
        rows.append(("thumbs", None))
        ratios.append(1.5)
    for m, a in arrays.items():
        units = a["units"].shape[0]
        rows += [("summed", m), ("heat", m)]
        ratios += [1.0, max(1.0, min(3.0, 0.16 * units))]
    fig = new_figure(10.0, 0.9 + 1.15 * sum(ratios))
    gs = fig.add_gridspec(len(rows), 2, height_ratios=ratios, width_ratios=[60, 1])
    title = f"{record['id']}: top {label}"
    if record.get("labels"):
        truth = ", ".join(_short(c["name"] or "class " + str(c["class"])) for c in record["labels"][:4])
        title += f"\ntrue labels: {truth}{' ...' if len(record['labels']) > 4 else ''}"
    fig.suptitle(title, fontsize=11)
    shared = None
    for r, (kind, m) in enumerate(rows):
        if kind == "thumbs":
            sub = gs[r, 0].subgridspec(1, len(thumbnails))
            for i, (t, img) in enumerate(thumbnails):
                ax = fig.add_subplot(sub[0, i])
                ax.imshow(img)
                ax.set_title(f"{t:.1f} s", fontsize=9)
                ax.set_axis_off()
            continue
        a, info = arrays[m], record["attention"][m]
        edges = _edges(a["time"])
        ax = fig.add_subplot(gs[r, 0], sharex=shared)
        shared = shared or ax
        if kind == "summed":
            units = a["units"].shape[0]
            marked = record.get("marked")
            if marked:
                frames = np.unique(np.asarray(record["frames"]["frame_index"]))
                label = marked["label"]
                for d in np.flatnonzero(np.isin(frames, marked["frame_index"])):
                    ax.axvspan(edges[d], edges[d + 1], color="#E69F00", alpha=0.45, linewidth=0, label=label)
                    label = None  # one legend entry
            for k, seg in enumerate(record.get("segments") or []):  # where the windowed score is above threshold
                ax.axvspan(seg["start"], seg["end"], ymin=0.9, ymax=1.0, linewidth=0, color=SEGMENT_COLORS[
                    seg["rank"] % len(SEGMENT_COLORS)], label=f"predicted: {_short(seg['name'] or 'class ' + str(seg['class']))}"
                    if seg["rank"] not in {x["rank"] for x in record["segments"][:k]} else None)
            ax.stairs(a["summed"], edges, fill=True, color="0.25")
            ax.axhline(units / len(a["time"]), color="0.5", linestyle="--", linewidth=1, label="uniform")
            ax.set_ylabel("summed\nattention")
            overlap = "n/a" if info["overlap"] is None else f"{info['overlap']:.2f}"
            if info["distinct_frames"] == 1:
                note = "one frame (video-level features?): the attention has nothing to choose from"
            else:
                note = (f"they look at {info['effective_frames']:.1f} of {info['distinct_frames']} frames "
                        f"(effective), unit overlap {overlap}")
            ax.set_title(f"{m}: {units} unit{'s' if units != 1 else ''}; {note}", fontsize=10, loc="left")
            ax.legend(loc="upper right", fontsize=8, frameon=False)
            ax.tick_params(labelbottom=False)
            ax.set_ylim(bottom=0)
        else:
            units = a["units"].shape[0]
            mesh = ax.pcolormesh(edges, np.arange(units + 1), a["units"], cmap=CMAP, vmin=0.0,
                                 vmax=max(float(a["units"].max()), 1e-9))
            ax.set_ylabel("attention unit")
            ax.set_yticks(np.arange(units) + 0.5, [str(u) for u in range(units)] if units <= 16 else
                          [str(u) if u % 4 == 0 else "" for u in range(units)], fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("time in the video (seconds)")
            cax = fig.add_subplot(gs[r, 1])
            fig.colorbar(mesh, cax=cax, label="weight")
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Output files


class OutputNames:
    """Safe, distinct file names for video ids: characters outside ``[A-Za-z0-9_-]`` become ``_``; a name that
    changed, or that would clash with an earlier one on a case-insensitive disk, gets a hash of the id."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, vid: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", vid)[:80] or "_"
        name = base if base == vid else f"{base}-{hashlib.sha1(vid.encode()).hexdigest()[:8]}"
        n = 1
        while name.lower() in self.used:
            n += 1
            name = f"{base}-{hashlib.sha1(vid.encode()).hexdigest()[:8]}-{n}"
        self.used.add(name.lower())
        return name


class HtmlIndex:
    """``index.html`` written row by row as videos are explained (nothing accumulates in memory)."""

    def __init__(self, path: Path, title: str) -> None:
        self.path = path
        self._output = atomic_output(path)
        self.f = self._output.__enter__()
        self.count = 0
        e = html.escape
        self.f.write(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title>\n<style>body{{font-family:sans-serif;margin:1.5em}}"
            "table{border-collapse:collapse}td,th{border-bottom:1px solid #ccc;padding:.4em;vertical-align:top;"
            "text-align:left}img{max-width:720px}</style></head><body>\n"
            f"<h1>{e(title)}</h1>\n<table>\n<tr><th>video</th><th>top classes</th><th>true labels</th>"
            "<th>attention</th></tr>\n")

    def add(self, record: Mapping[str, Any], name: str, figure: bool = True) -> None:
        e = html.escape

        def label(c: Mapping[str, Any]) -> str:
            return e(c["name"] if c.get("name") is not None else f"class {c['class']}")

        classes = "<br>".join(f"{label(c)} ({c['score']:.3f})" for c in record["top_classes"])
        if "labels" not in record:  # decoded videos: no ground truth
            truth = "<i>not known</i>"
        elif not record["labels"]:
            truth = "<i>none</i>"
        else:  # a true label among the top classes is marked with a check
            top = {c["class"] for c in record["top_classes"]}
            truth = "<br>".join(label(c) + (" &#10003;" if c["class"] in top else "") for c in record["labels"])
        link = quote(name)
        img = f"<a href=\"{link}.png\"><img src=\"{link}.png\" alt=\"attention of {e(record['id'])}\"></a>" \
            if figure else ""
        self.f.write(f"<tr><td><a href=\"{link}.json\">{e(record['id'])}</a></td><td>{classes}</td>"
                     f"<td>{truth}</td><td>{img}</td></tr>\n")
        self.count += 1

    def close(self) -> None:
        self.f.write(f"</table>\n<p>{self.count} videos. Per video: NAME.json (weights, timestamps, diversity) and "
                     f"NAME.png. {SIGNATURE}.</p>\n</body></html>\n")
        self._output.__exit__(None, None, None)

    def abort(self) -> None:
        """A failed run: the page being written is dropped and a previous ``index.html`` stays as it was."""
        with contextlib.suppress(Exception):
            self._output.__exit__(RuntimeError, RuntimeError("explain stopped"), None)


SIGNATURE = "Made by <code>attncluster explain</code>"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    with atomic_output(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")


# ----------------------------------------------------------------------------------------------------------------
# Sources of videos


def iter_data(cfg: Config, specs: list[str], ids: Iterable[str] | None, fps: float,
              batch_size: int = 64) -> Iterator[tuple[list[dict], dict[str, torch.Tensor]]]:
    """Stream feature shards as eval reads them; yields (per-video info, features of the kept videos).

    Info: ``id``, ``frame_index`` (L,), ``timestamps`` (L,), ``num_frames``. With ``ids`` only those videos are
    kept, and reading stops once all are found; ids never found raise DataError naming them.
    """
    from attncluster.data.dataset import VideoDataset, make_loader
    from attncluster.data.records import dequantize
    from attncluster.data.sampling import sample_indices
    from attncluster import distributed

    wanted = None if ids is None else set(ids)
    ds = VideoDataset.from_config(cfg, specs, train=False, dist=distributed.DistInfo())  # one process
    found: set[str] = set()
    for batch in make_loader(ds, batch_size, num_workers=cfg.data.num_workers):
        keep = [i for i, v in enumerate(batch["id"]) if wanted is None or (v in wanted and v not in found)]
        if not keep:
            continue
        info = []
        for i in keep:
            n = int(batch["num_frames"][i])
            idx = sample_indices(n, cfg.model.seg_num)  # the eval sampler, deterministic
            info.append({"id": batch["id"][i], "frame_index": idx, "timestamps": idx / fps, "num_frames": n,
                         "timing": DATA_TIMING.format(fps=fps),
                         "labels": np.flatnonzero(batch["labels"][i].numpy()).tolist()})
            found.add(batch["id"][i])
        sel = torch.as_tensor(keep)
        feats = {}
        for m in cfg.model.feature_dims:
            x = batch[m][sel]
            feats[m] = dequantize(x) if x.dtype == torch.uint8 else x.float()
        yield info, feats
        if wanted is not None and found >= wanted:
            return
    if wanted is not None and found != wanted:
        missing = sorted(wanted - found)
        raise DataError(f"--ids: {len(missing)} id(s) not in the data {' '.join(specs)}: "
                        f"{', '.join(repr(v) for v in missing[:10])}{' ...' if len(missing) > 10 else ''}")


# ----------------------------------------------------------------------------------------------------------------
# The verb


def explain(cfg: Config, weights: str, output: str | Path, data: list[str] | None = None,
            ids: list[str] | None = None, videos: list[str] | None = None, top_k: int = 5, vocab: str | bool | None = None,
            fps: float | None = None, device: str | None = None, figures: bool = True, log=print,
            extractor=None, max_videos: int | None = None, mark=None, skip_bad: bool = False,
            segment_window: float = 10.0, **pipeline_options) -> int:
    """The ``explain`` verb: ``ID.json`` + ``ID.png`` per video and ``index.html`` under ``output``.

    Args:
        cfg: the model's config.
        weights: checkpoint / weights file.
        output: output folder (created).
        data: feature shards (as ``predict --data``); or
        videos: video files, decoded and featurised as ``extract`` does (needs the video extra).
        ids: with ``data``, only these video ids (each must be present).
        top_k: classes listed per video.
        vocab: YouTube-8M ``vocabulary.csv`` for names (default: ``data.class_names`` of the config).
        fps: with ``data``, frames per second of the feature shards, for timestamps (default 1, YouTube-8M's);
            with ``videos``, the sampling rate of the decoder (default 1).
        device: torch device.
        figures: also draw ``ID.png`` (False: JSON and index only).
        extractor: with ``videos``, an ``attncluster.extract.pipeline.Extractor`` (default: built from the
            config, see :func:`_video_source`).
        max_videos: stop after this many videos.
        mark: optional ``mark(info, frames) -> (label, (L,) bool)`` flagging sampled frames to shade in the figure
            (e.g. known events; the quickstart marks its planted signal); ``frames`` is modality -> (L, F) array.
        skip_bad: with ``videos``, skip (and report on stderr) files that fail to decode instead of stopping.
        segment_window: seconds of the sliding window behind each record's ``segments`` (see DEFINITIONS).
        pipeline_options: with ``videos`` and no ``extractor``: ``max_frames``, ``num_workers`` and the
            ``attncluster.extract.pipeline.make_pipeline`` options (preset, inception, pca, vggish, vggish_pca,
            random_weights, backbone, backbone_weights, precision), as ``extract`` takes them.

    Returns:
        The number of videos explained.
    """
    from attncluster import distributed
    from attncluster.inference import class_names_for, load_model

    if (data is None) == (videos is None):
        raise ConfigError("explain: give either --data PATHS or --videos FILES")
    if ids is not None and data is None:
        raise ConfigError("explain: --ids selects videos of --data; with --videos list the files instead")
    if not 0 < top_k <= cfg.model.num_classes:
        raise ConfigError(f"--top-k {top_k}: must be in 1..{cfg.model.num_classes} (model.num_classes)")
    if fps is not None and not fps > 0:
        raise ConfigError(f"--fps {fps}: must be > 0")
    if max_videos is not None and max_videos < 1:
        raise ConfigError(f"--max-videos {max_videos}: must be >= 1")
    if figures:
        _require_matplotlib()
    names = class_names_for(cfg.model.num_classes, cfg, vocab)
    dev = distributed.device_for(device, distributed.DistInfo())
    model = load_model(cfg, weights, dev)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out}: exists and is not a folder")
    page = out / "index.html"
    if page.is_file() and SIGNATURE not in page.read_text(encoding="utf-8", errors="replace"):
        raise ConfigError(f"--output {out}: holds an index.html that attncluster explain did not write; choose "
                          "another --output (explain replaces only its own page)")
    # A killed explain's temporary files in this (its own) folder; those a live explain is writing stay.
    remove_stale(page, matches=lambda n: (target_of_temporary(n) or "").endswith((".json", ".png", ".html")))
    if data is not None:
        source = iter_data(cfg, data, ids, fps or 1.0)
    else:
        def on_bad(path: str, message: str) -> None:
            print(f"skipped: {message}", file=sys.stderr, flush=True)

        pipeline_options.setdefault("device", device)
        source = _video_source(cfg, videos, extractor, skip_bad=skip_bad, on_bad=on_bad, fps=fps,
                               **pipeline_options)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    file_names = OutputNames()
    index = HtmlIndex(page, f"attncluster explain: {Path(weights).name}")
    count = 0
    ok = False
    try:
        for info, feats in source:
            feats = {m: x.to(dev) for m, x in feats.items()}
            attention, scores = attention_batch(model, feats, cfg.train.loss, cfg.train.precision)
            for i, v in enumerate(info):
                record = video_record(v["id"], {m: a[i] for m, a in attention.items()}, v["frame_index"],
                                      v["timestamps"], scores[i], top_k, names, v["num_frames"], v["timing"],
                                      v.get("labels"))
                record["segments"] = predicted_segments(model, cfg, {m: x[i] for m, x in feats.items()},
                                                        v["timestamps"], record["top_classes"][:3], names,
                                                        window=segment_window)
                if mark is not None:
                    label, flags = mark(v, {m: x[i].cpu().numpy() for m, x in feats.items()})
                    record["marked"] = {"label": label,
                                        "frame_index": sorted({int(f) for f in v["frame_index"][np.asarray(flags)]})}
                name = file_names(v["id"])
                _write_json(out / f"{name}.json", record)
                if figures:
                    fig = explain_figure(record, _thumbnails(record, v.get("images")))
                    save_figure(fig, out / f"{name}.png")
                    del fig  # no pyplot registry: dropping the last reference frees it
                index.add(record, name, figure=figures)
                count += 1
                if max_videos is not None and count >= max_videos:
                    break
            if max_videos is not None and count >= max_videos:
                break
        ok = True
    finally:
        if ok:
            index.close()
        else:  # an error or Ctrl-C: keep the previous page (or none) and no folder this run made for nothing
            index.abort()
            if created and count == 0:
                with contextlib.suppress(OSError):
                    out.rmdir()
    log(f"explain: {count} videos -> {out} (index.html, ID.json{', ID.png' if figures else ''})")
    return count


def _thumbnails(record: Mapping[str, Any], images: np.ndarray | None) -> list[tuple[float, np.ndarray]] | None:
    """The ``THUMBNAILS`` most-attended distinct frames (summed attention over modalities, each normalised to 1),
    in time order, as (timestamp, image); ``images`` is (L, H, W, 3), one per sampled position."""
    if images is None:
        return None
    frame_index = np.asarray(record["frames"]["frame_index"])
    total = np.zeros(len(frame_index))
    for a in record["attention"].values():
        total += np.asarray(a["summed"]) / len(a["units"])
    frames, merged = merge_repeats(frame_index, total)
    best = np.sort(np.argsort(-merged, kind="stable")[:THUMBNAILS])
    first = np.searchsorted(frame_index, frames[best])
    ts = record["frames"]["timestamp_s"]
    return [(float(ts[p]), images[p]) for p in first]


THUMB_HEIGHT = 96  # pixels: thumbnails are decoded small, so a long HD video never sits in memory at full size


def _video_source(cfg: Config, videos: list[str], extractor=None, skip_bad: bool = False, on_bad=None,
                  **pipeline_options) -> Iterator[tuple[list[dict], dict[str, torch.Tensor]]]:
    """Video files, featurised by ``extractor`` (an ``attncluster.extract.pipeline.Extractor``; default: one made
    from ``pipeline_options`` as ``extract`` makes it), sampled as eval samples; one video per step.

    Thumbnails: each video is decoded a second time, without audio and scaled to ``THUMB_HEIGHT`` pixels, with the
    same sampling rule, so the images are the frames the features came from.
    """
    try:
        from attncluster.extract.decode import decode_video
        from attncluster.extract.pipeline import default_extractor, expand_videos
    except ImportError as e:
        raise ConfigError(f"explain --videos needs attncluster.extract and PyAV ({e}); install the video extra: "
                          "pip install 'attncluster[video]'") from None
    from attncluster.data.records import dequantize
    from attncluster.data.sampling import sample_indices

    paths = expand_videos(videos, log=lambda m: print(m, file=sys.stderr))  # a missing file fails here, before the backbones load
    if extractor is None:  # as classify_videos makes it
        extractor = default_extractor(pipeline_options.pop("fps", None) or 1.0,
                                      pipeline_options.pop("max_frames", None) or 300,
                                      pipeline_options.pop("num_workers", "auto"),
                                      pipeline_options.pop("device", None), **pipeline_options)
    for m, dim in cfg.model.feature_dims.items():
        if extractor.modalities.get(m) != dim:
            raise ConfigError(f"model.feature_dims.{m} = {dim}, but the extractor gives {extractor.modalities}; "
                              "use the preset the model was trained on")
    for rec in extractor.iter_extract(paths, skip_bad=skip_bad, on_bad=on_bad):
        n = min(len(rec[m]) for m in cfg.model.feature_dims)
        idx = sample_indices(n, cfg.model.seg_num)  # the frames eval would see in extracted shards
        source = rec.get("source", rec["id"])
        images = _thumbnail_frames(decode_video, source, extractor, rec["frame_indices"], idx)
        info = {"id": rec["id"], "frame_index": np.asarray(rec["frame_indices"])[idx],
                "timestamps": np.asarray(rec["timestamps"], dtype=np.float64)[idx], "num_frames": n,
                "timing": VIDEO_TIMING, "images": images, "source": source}
        feats = {}
        for m in cfg.model.feature_dims:
            x = torch.from_numpy(np.ascontiguousarray(rec[m][idx]))[None]  # (1, L, F)
            feats[m] = dequantize(x) if x.dtype == torch.uint8 else x.float()
        yield [info], feats


def _thumbnail_frames(decode_video, path: str, extractor, frame_indices, idx) -> np.ndarray | None:
    """(L, h, w, 3) small images of the sampled frames, or None for a URL (decoded only once, by the workers)."""
    if "://" in path and not path.startswith("file://"):
        return None
    import av

    local = path[len("file://"):] if path.startswith("file://") else path
    with av.open(local) as container:
        stream = container.streams.video[0]
        h, w = stream.codec_context.height or THUMB_HEIGHT, stream.codec_context.width or THUMB_HEIGHT
    size = (THUMB_HEIGHT, max(2, round(THUMB_HEIGHT * w / h / 2) * 2))
    d = decode_video(local, fps=extractor.fps, max_frames=extractor.max_frames, audio=False, size=size)
    if not np.array_equal(d.frame_indices, frame_indices):
        raise DataError(f"{path}: decoding twice sampled different frames (thumbnails would not match the "
                        "features)")
    return d.frames[idx]


__all__ = ["attention_batch", "diversity", "explain", "explain_figure", "figure_arrays", "merge_repeats",
           "video_record"]
