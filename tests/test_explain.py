"""explain: the weights it reports are the forward pass's, the JSON and figures hold them, bad input is one line,
and on the synthetic data a trained model's attention goes to the frames that carry the labels."""

import json
import math

import numpy as np
import pytest
import torch

from attncluster.cli import main
from attncluster.config import load_config
from attncluster.data.records import dequantize
from attncluster.data.tfrecord import TFRecordWriter
from attncluster.data.yt8m import YT8MShard, encode_sequence_example, quantize
from attncluster.errors import DataError
from attncluster.explain import (HtmlIndex, OutputNames, diversity, explain, explain_figure, figure_arrays,
                                 video_record)
from attncluster.inference import load_model
from attncluster.model import L2_EPS, AttentionCluster
from attncluster.train import fit
from conftest import TINY_CLASSES, tiny_overrides

quiet = lambda msg: None  # noqa: E731


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    """A tiny model trained one epoch on the conftest data: (config, checkpoint path)."""
    run = tmp_path_factory.mktemp("explain_run")
    cfg = load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1}))
    fit(cfg, run_dir=run, device="cpu", log=quiet)
    return run / "config.yaml", run / "checkpoints" / "last.pt"


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- the weights are the forward pass's -------------------------------------------------------------------------


def test_attention_weights_are_exactly_the_ones_the_forward_pass_pools_with():
    torch.manual_seed(0)
    model = AttentionCluster({"rgb": 6, "audio": 3}, cluster_nums={"rgb": 3, "audio": 2}, num_classes=4,
                             drop_rate=0.0, hidden_sizes=(5,)).eval()
    x = {"rgb": torch.randn(2, 7, 6), "audio": torch.randn(2, 7, 3)}
    # 1. What the forward pass computed: capture each unit's frame scores with a hook and softmax them over time.
    scores = {}
    hooks = [unit.score.register_forward_hook(lambda mod, inp, out, m=m: scores.__setitem__(m, out))
             for m, unit in model.attention.items()]
    with torch.no_grad():
        logits = model(x)
        weights = model.attention_weights(x)
    for h in hooks:
        h.remove()
    for m in x:
        assert weights[m].shape == (2, 7, model.cluster_nums[m])
        assert torch.equal(weights[m], scores[m].softmax(dim=1))
        assert torch.allclose(weights[m].sum(dim=1), torch.ones(2, model.cluster_nums[m]))
    # 2. Rebuild the logits from the explained weights by hand (pool, shift, L2, head): identical to forward.
    parts = []
    for m, unit in model.attention.items():
        v = torch.bmm(weights[m].transpose(1, 2), x[m])
        v = v * unit.shift_w[:, None] + unit.shift_b[:, None]
        v = v * torch.rsqrt(v.pow(2).sum(dim=-1, keepdim=True) + L2_EPS) / math.sqrt(unit.num_clusters)
        parts.append(v.flatten(1))
    h = torch.cat(parts, dim=1)
    for fc in model.hidden:
        h = torch.tanh(fc(h))
    with torch.no_grad():
        assert torch.equal(model.logits(h), logits)
    with pytest.raises(KeyError, match="audio"):
        model.attention_weights({"rgb": x["rgb"]})


# --- the numbers ------------------------------------------------------------------------------------------------


def test_diversity_by_hand():
    one_hot = np.eye(4, 2, dtype=np.float32)  # unit 0 on frame 0, unit 1 on frame 1
    d = diversity(one_hot, np.arange(4))
    assert d["overlap"] == 0.0 and d["effective_frames"] == pytest.approx(2.0)
    assert d["effective_frames_per_unit"] == pytest.approx([1.0, 1.0]) and d["distinct_frames"] == 4
    same = np.full((4, 3), 0.25, dtype=np.float32)  # three identical uniform units
    d = diversity(same, np.arange(4))
    assert d["overlap"] == pytest.approx(1.0) and d["effective_frames"] == pytest.approx(4.0)
    # A frame sampled twice (a video shorter than seg_num) is one frame: its two halves add up.
    d = diversity(np.array([[0.25], [0.25], [0.5]], dtype=np.float32), np.array([0, 0, 1]))
    assert d["overlap"] is None and d["distinct_frames"] == 2 and d["effective_frames"] == pytest.approx(2.0)
    # Overlap of two units, by hand: sum_f min = min(.5,.1) + min(.5,.9) = 0.6
    d = diversity(np.array([[0.5, 0.1], [0.5, 0.9]], dtype=np.float32), np.arange(2))
    assert d["overlap"] == pytest.approx(0.6)
    p = np.array([0.6, 1.4]) / 2
    assert d["effective_frames"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))


# --- the JSON against the model's own weights -------------------------------------------------------------------


def test_explain_json_holds_the_models_weights_frames_and_classes(tiny_run, tiny_data, tmp_path):
    config, ckpt = tiny_run
    shard = tiny_data / "valid" / "validate0000.tfrecord"
    videos = [YT8MShard(str(shard), modalities=None, num_classes=TINY_CLASSES).read(i) for i in (3, 11)]
    ids = [v.id for v in videos]
    out = tmp_path / "ex"
    assert main(["explain", "--config", str(config), "--weights", str(ckpt), "--data", str(tiny_data / "valid"),
                 "--ids", *ids, "--output", str(out), "--top-k", "3", "--vocab",
                 str(tiny_data / "valid" / "vocabulary.csv"), "--device", "cpu"]) == 0
    cfg = load_config(config)
    model = load_model(cfg, str(ckpt), "cpu")
    seg = cfg.model.seg_num
    for video in videos:
        rec = json.loads((out / f"{video.id}.json").read_text())
        n = video.num_frames
        idx = [min(n - 1, math.floor((i + 0.5) * n / seg)) for i in range(seg)]  # eval's stratum centres
        assert rec["id"] == video.id and rec["num_frames"] == n
        assert rec["frames"]["frame_index"] == idx
        assert rec["frames"]["timestamp_s"] == [float(i) for i in idx]  # YouTube-8M: 1 frame per second
        x = {m: torch.from_numpy(dequantize(video.features[m][idx]))[None] for m in cfg.model.feature_dims}
        with torch.no_grad():
            weights = model.attention_weights(x)
            scores = torch.sigmoid(model(x))[0].numpy()
        for m, w in weights.items():
            a = rec["attention"][m]
            # explain runs the videos as one batch, this test one by one: a GEMM over another batch shape (or thread
            # count) rounds in another order. float32 logits over 1,024 features round to ~sqrt(1024) * 6e-8 = 2e-6
            # relative; the softmax weights (<= 1) then differ by at most ~1e-6 (seen: 6e-8).
            np.testing.assert_allclose(np.asarray(a["units"], dtype=np.float32), w[0].numpy().T, rtol=1e-5, atol=1e-6)
            assert np.allclose(a["summed"], w[0].numpy().sum(axis=1), atol=1e-6)
            # effective frames over distinct frames, computed plainly
            merged = {}
            for t, f in enumerate(idx):
                merged[f] = merged.get(f, 0.0) + float(w[0, t].sum()) / w.shape[2]
            p = np.array(list(merged.values()))
            assert a["effective_frames"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
        top = np.argsort(-scores)[:3]
        assert [c["class"] for c in rec["top_classes"]] == top.tolist()
        assert [c["name"] for c in rec["top_classes"]] == [f"Synthetic class {k}" for k in top]
        assert [c["score"] for c in rec["top_classes"]] == pytest.approx(scores[top].tolist(), rel=1e-5)
        assert [c["class"] for c in rec["labels"]] == sorted(int(k) for k in video.labels)
        assert (out / f"{video.id}.png").stat().st_size > 10_000
    page = (out / "index.html").read_text()
    assert all(f'href="{v}.json"' in page and f'src="{v}.png"' in page for v in ids)


# --- the figure's data ------------------------------------------------------------------------------------------


def _record(vid="v1", frame_index=(0, 0, 1, 3), units=((0.1, 0.2, 0.3, 0.4), (0.4, 0.4, 0.1, 0.1)), names=None):
    w = np.asarray(units, dtype=np.float32).T  # (L, C)
    scores = np.array([0.2, 0.9, 0.5], dtype=np.float32)
    fi = np.asarray(frame_index)
    return video_record(vid, {"rgb": w}, fi, fi / 1.0, scores, 2, names or ["cat", "dog", "eel"], 4, "1 fps")


def test_figure_draws_the_summed_attention_and_the_unit_heatmap_of_distinct_frames():
    rec = _record()
    arrays = figure_arrays(rec)["rgb"]
    # by hand: frame 0 is sampled twice, its weights add up; frames 1 and 3 once
    assert arrays["time"].tolist() == [0.0, 1.0, 3.0]
    assert np.allclose(arrays["units"], [[0.3, 0.3, 0.4], [0.8, 0.1, 0.1]])
    assert np.allclose(arrays["summed"], [1.1, 0.4, 0.5])
    fig = explain_figure(rec)
    from matplotlib.collections import QuadMesh
    from matplotlib.patches import StepPatch

    heat = [ax for ax in fig.axes if ax.get_ylabel() == "attention unit"]  # (the colour bar draws a mesh too)
    meshes = [c for ax in heat for c in ax.collections if isinstance(c, QuadMesh)]
    steps = [p for ax in fig.axes for p in ax.patches if isinstance(p, StepPatch)]
    assert len(meshes) == 1 and len(steps) == 1
    assert np.allclose(np.asarray(meshes[0].get_array()).reshape(2, 3), arrays["units"])
    assert meshes[0].get_cmap().name == "viridis"
    values, edges, _ = steps[0].get_data()
    # A frame's cell starts at its timestamp (old code: centred cells, [-0.5, 0.5, 2.0, 4.0]: negative time, and a
    # segment [start, end) drawn half a frame off the frames it covers).
    assert np.allclose(values, arrays["summed"]) and np.allclose(edges, [0.0, 1.0, 3.0, 5.0])
    assert np.allclose(meshes[0].get_coordinates()[0, :, 0], [0.0, 1.0, 3.0, 5.0])
    assert min(ax.get_xlim()[0] for ax in heat) >= 0.0
    assert any("seconds" in ax.get_xlabel() for ax in fig.axes)
    assert "dog (0.90)" in fig._suptitle.get_text() and "eel (0.50)" in fig._suptitle.get_text()
    thumbs = explain_figure(rec, [(1.0, np.zeros((8, 8, 3), np.uint8)), (3.0, np.ones((8, 8, 3), np.uint8))])
    assert sorted(ax.get_title() for ax in thumbs.axes if ax.images) == ["1.0 s", "3.0 s"]


# --- file names and HTML ----------------------------------------------------------------------------------------


def test_hostile_ids_are_escaped_in_html_and_sanitised_in_file_names(tmp_path):
    names = OutputNames()
    hostile = '../<script>alert("x")</script>&'
    name = names(hostile)
    assert "/" not in name and "<" not in name and not name.startswith(".")
    assert names("Ab12") == "Ab12" and names("aB12") != "aB12"  # distinct on a case-insensitive disk
    index = HtmlIndex(tmp_path / "index.html", "t")
    index.add(_record(vid=hostile, names=["<b>cat</b>", "dog & co", "eel"]), name)
    index.close()
    page = (tmp_path / "index.html").read_text()
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page and "dog &amp; co" in page


def _cells(page: str) -> list[list[str]]:
    """The table rows of an index.html, as the text of their cells (a tiny parser, independent of explain.py)."""
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = []
            elif tag == "br" and self.cell is not None:
                self.cell.append("|")

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Rows()
    parser.feed(page)
    return parser.rows


def test_the_index_shows_the_true_labels_beside_the_predictions_escaped(tmp_path):
    """Top-2 of scores [0.2, 0.9, 0.5] is dog, eel; true labels dog (predicted: marked) and a hostile name."""
    names = ["<i>cat</i> & co", "dog", "eel"]
    rec = _record(names=names)
    rec["labels"] = [{"class": 0, "name": names[0]}, {"class": 1, "name": "dog"}]
    unnamed = _record(vid="v2", names=None)
    unnamed["labels"] = [{"class": 2, "name": None}]
    unknown = _record(vid="v3")  # decoded videos have no ground truth
    index = HtmlIndex(tmp_path / "index.html", "t")
    for r, n in ((rec, "v1"), (unnamed, "v2"), (unknown, "v3")):
        index.add(r, n, figure=False)
    index.close()
    page = (tmp_path / "index.html").read_text()
    assert "<i>cat</i>" not in page and "&lt;i&gt;cat&lt;/i&gt; &amp; co" in page
    rows = _cells(page)
    assert rows[0] == ["video", "top classes", "true labels", "attention"]
    assert rows[1][:3] == ["v1", "dog (0.900)|eel (0.500)", "<i>cat</i> & co|dog \u2713"]
    assert rows[2][2] == "class 2 \u2713" and rows[3][2] == "not known"


def test_explain_on_labelled_data_lists_each_videos_labels(tiny_run, tiny_data, tmp_path):
    config, ckpt = tiny_run
    cfg = load_config(config)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".v1.json.k3j2h1.tmp").write_text("a killed run's half file")  # removed at the start
    (out / ".notes.txt").write_text("a user's")  # kept
    assert explain(cfg, str(ckpt), out, data=[str(tiny_data / "valid")], device="cpu", figures=False,
                   max_videos=3, log=quiet) == 3
    assert not (out / ".v1.json.k3j2h1.tmp").exists() and (out / ".notes.txt").exists()
    truth = {}
    for shard in sorted((tiny_data / "valid").glob("*.tfrecord")):
        for video in YT8MShard(str(shard), modalities=None, num_classes=TINY_CLASSES):
            truth[video.id] = sorted(int(k) for k in video.labels)
    rows = _cells((out / "index.html").read_text())[1:]
    assert len(rows) == 3
    for row in rows:
        shown = [int(x.split()[1]) for x in row[2].split("|")]  # "class 3" or "class 3 \u2713"
        assert shown == truth[row[0]], row


def test_explain_end_to_end_with_a_hostile_video_id(tiny_run, tmp_path):
    config, ckpt = tiny_run
    cfg = load_config(config)
    rng = np.random.default_rng(0)
    hostile = '../../<img src=x onerror=alert(1)>'
    frames = {m: quantize(rng.standard_normal((9, d)).astype(np.float32)) for m, d in cfg.model.feature_dims.items()}
    data = tmp_path / "hostile.tfrecord"
    with TFRecordWriter(str(data)) as w:
        w.write(encode_sequence_example(hostile, [1], frames))
    out = tmp_path / "out"
    assert explain(cfg, str(ckpt), out, data=[str(data)], device="cpu", log=quiet) == 1
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3 and "index.html" in written  # NAME.json, NAME.png, all inside out/
    rec = json.loads(next(out.glob("*.json")).read_text())
    assert rec["id"] == hostile
    assert "<img src=x" not in (out / "index.html").read_text()


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_inputs_are_one_error_line(tiny_run, tiny_data, tmp_path, capsys):
    config, ckpt = tiny_run
    base = ["explain", "--config", str(config), "--weights", str(ckpt), "--output", str(tmp_path / "o"),
            "--device", "cpu"]
    err = _one_line_error(capsys, [*base, "--data", str(tiny_data / "valid"), "--ids", "nope"])
    assert "'nope'" in err and "not in the data" in err
    err = _one_line_error(capsys, [*base, "--data", str(tmp_path / "missing")])
    assert "missing" in err
    err = _one_line_error(capsys, [*base, "--data", str(tiny_data / "valid"), "--top-k", "0"])
    assert "--top-k" in err
    err = _one_line_error(capsys, ["explain", "--config", str(config), "--weights", str(tmp_path / "no.pt"),
                                   "--data", str(tiny_data / "valid"), "--output", str(tmp_path / "o")])
    assert "no.pt" in err


# --- --videos: decoded files, thumbnails of the most-attended frames --------------------------------------------


class ColourFeatures:
    """A tiny stand-in for the yt8m FeaturePipeline (same interface): a frame's features are its mean grey level
    repeated, quantized as the dataset's bytes; audio is silence. Enough to drive explain from real decoded files."""

    modalities = {"rgb": 1024, "audio": 128}
    quantized = True
    frame_size = None

    def frame_features(self, frames):
        level = frames.reshape(len(frames), -1).mean(axis=1).astype(np.uint8)  # (T,)
        return np.repeat(level[:, None], 1024, axis=1)

    def audio_features(self, wav, sample_rate=16000):
        return np.zeros((max(1, len(wav) // 15360), 128), dtype=np.uint8)


def test_explain_videos_timestamps_and_thumbnails_are_the_decoded_frames(tiny_run, tmp_path):
    pytest.importorskip("av")
    from matplotlib.image import AxesImage

    import attncluster.explain as ex
    from attncluster.extract.pipeline import Extractor
    from extract_videos import frame_index, make_video

    config, ckpt = tiny_run
    cfg = load_config(config)
    video = tmp_path / "clip.mp4"
    make_video(video, 120, rate=10)  # 12 s at 10 fps: the 1 frame/s rule samples frames 0, 10, ..., 110
    out = tmp_path / "out"
    figures = []  # a spy: explain's own figure function, its arguments and the Figure it returned
    real_figure = ex.explain_figure

    def spy(rec, thumbs=None):
        figures.append((rec, thumbs, real_figure(rec, thumbs)))
        return figures[-1][2]

    ex.explain_figure = spy
    try:
        n = explain(cfg, str(ckpt), out, videos=[str(video)], device="cpu", log=quiet,
                    extractor=Extractor(ColourFeatures(), num_workers=0))
    finally:
        ex.explain_figure = real_figure
    assert n == 1
    rec = json.loads((out / "clip.json").read_text())
    seg = cfg.model.seg_num
    idx = [min(11, math.floor((i + 0.5) * 12 / seg)) for i in range(seg)]  # eval's sampling of 12 frames
    assert rec["frames"]["frame_index"] == [10 * i for i in idx]
    assert rec["frames"]["timestamp_s"] == pytest.approx([float(i) for i in idx])
    (_, thumbs, fig), = figures
    # the thumbnails are the most-attended distinct frames, in time order, and show those very frames
    total = np.zeros(12)  # per frame (stream index / 10): summed attention over modalities, each over its units
    for a in rec["attention"].values():
        for t, f in enumerate(rec["frames"]["frame_index"]):
            total[f // 10] += a["summed"][t] / len(a["units"])
    expected = sorted(np.argsort(-total, kind="stable")[:ex.THUMBNAILS].tolist())
    assert [t for t, _ in thumbs] == pytest.approx([float(f) for f in expected])
    shown = [a for a in fig.axes if any(isinstance(i, AxesImage) for i in a.images)]
    assert [frame_index(np.asarray(a.images[0].get_array())) for a in shown] == [10 * f for f in expected]
    assert [a.get_title() for a in shown] == [f"{float(f):.1f} s" for f in expected]


def test_a_video_that_fails_to_decode_is_named(tiny_run, tmp_path):
    pytest.importorskip("av")
    from attncluster.extract.pipeline import Extractor

    config, ckpt = tiny_run
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(DataError, match="broken.mp4"):
        explain(load_config(config), str(ckpt), tmp_path / "o", videos=[str(bad)], device="cpu", log=quiet,
                extractor=Extractor(ColourFeatures(), num_workers=0))


def test_cli_explain_videos_names_a_missing_file(tiny_run, tmp_path, capsys):
    pytest.importorskip("av")
    config, ckpt = tiny_run
    err = _one_line_error(capsys, ["explain", "--config", str(config), "--weights", str(ckpt), "--videos",
                                   str(tmp_path / "gone.mp4"), "--output", str(tmp_path / "o"), "--random-weights",
                                   "0", "--device", "cpu"])
    assert "gone.mp4" in err


@pytest.mark.slow  # builds the random Inception-v3 and VGGish first (~9 s on 2 loaded cores)
def test_cli_explain_videos_names_a_broken_file(tiny_run, tmp_path, capsys):
    pytest.importorskip("av")
    pytest.importorskip("attncluster.extract.features")
    config, ckpt = tiny_run
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 50)
    assert main(["explain", "--config", str(config), "--weights", str(ckpt), "--videos", str(bad), "--output",
                 str(tmp_path / "o"), "--random-weights", "0", "--num-workers", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "broken.mp4" in last and "Traceback" not in err, err


def test_a_failed_explain_keeps_the_previous_page_and_never_replaces_a_foreign_one(tiny_run, tiny_data, tmp_path):
    """An error (an unknown id) leaves a previous run's index.html as it was; a page explain did not write is
    refused; a failed first run leaves no folder behind."""
    from attncluster.errors import ConfigError, DataError
    from attncluster.explain import explain

    cfg_path, weights = tiny_run
    cfg, weights, data = load_config(cfg_path), str(weights), str(tiny_data / "valid")
    out = tmp_path / "ex"
    assert explain(cfg, weights, out, data=[data], max_videos=2, figures=False, log=lambda m: None) == 2
    before = (out / "index.html").read_text()
    with pytest.raises((ConfigError, DataError), match="nope"):
        explain(cfg, weights, out, data=[data], ids=["nope"], figures=False, log=lambda m: None)
    assert (out / "index.html").read_text() == before and not list(out.glob("*.tmp"))
    with pytest.raises((ConfigError, DataError), match="nope"):
        explain(cfg, weights, tmp_path / "new", data=[data], ids=["nope"], figures=False, log=lambda m: None)
    assert not (tmp_path / "new").exists()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my site</h1>")
    with pytest.raises(ConfigError, match="holds an index.html that attncluster explain did not write"):
        explain(cfg, weights, site, data=[data], max_videos=1, figures=False, log=lambda m: None)
    assert (site / "index.html").read_text() == "<h1>my site</h1>"
