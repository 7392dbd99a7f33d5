"""extract/pipeline.py: parallel decode + batched model, shards round trip, resume, bad files, torchrun split,
and predict --videos against extract-then-predict."""

from __future__ import annotations

import contextlib
import io
import json
import os
from contextlib import redirect_stdout
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("av")

from extract_videos import TinyPipeline, make_video  # noqa: E402

from attncluster.config import load_config  # noqa: E402
from attncluster.errors import ConfigError, DataError  # noqa: E402
from attncluster.extract.decode import decode_video  # noqa: E402
from attncluster.extract.pipeline import Extractor, run_extract, video_id  # noqa: E402
from attncluster.predict import classify_videos  # noqa: E402
from attncluster.extract.writer import read_manifests  # noqa: E402


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four small good videos (one without audio, one at 7.3 fps in mkv) and three bad files."""
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "a.mp4", 80, Fraction(25), audio_hz=440.0)            # 3.2 s: 4 frames, tone
    make_video(root / "b.mkv", 30, Fraction(73, 10), audio_hz=1000.0)       # 4.1 s at 7.3 fps: 4 frames
    make_video(root / "c.mp4", 50, Fraction(10))                            # 5 s, no audio: zero audio
    make_video(root / "d.mp4", 24, Fraction(12), audio_hz=300.0, audio_rate=22050)
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("not a video\n")
    (bad / "empty.mp4").write_bytes(b"")
    make_video(bad / "short.mp4", 3, Fraction(10))
    return root


def good(videos):
    return [str(videos / n) for n in ("a.mp4", "b.mkv", "c.mp4", "d.mp4")]


def expected_record(path, pipe: TinyPipeline):
    """Independent of the driver: decode, run the backbone on this video alone, align audio by the doc's rule."""
    d = decode_video(path, size=pipe.frame_size)
    rgb = pipe.frame_features(d.frames)
    if d.audio is None:
        audio = np.zeros((len(rgb), 128), np.uint8)
    else:
        ex = pipe.audio_features(np.pad(d.audio, (0, max(0, 15600 - d.audio.size))))
        audio = ex[[min(len(ex) - 1, int(round(t / 0.96))) for t in d.timestamps]]
    return rgb, audio, d


def test_extract_batches_across_videos_and_matches_per_video_computation(videos):
    pipe = TinyPipeline()
    ex = Extractor(pipe, num_workers=1, batch_frames=8)
    recs = list(ex.iter_extract(good(videos)))
    assert [r["id"] for r in recs] == ["a", "b", "c", "d"]  # input order
    assert sum(pipe.frame_calls) == 4 + 4 + 5 + 2
    # Decoded videos wait for a full batch (unless the next one is still being decoded: then the model runs on
    # what is there); in-process decoding has no wait, so the batches are exactly: a + b (8), c + d (7).
    serial = TinyPipeline()
    list(Extractor(serial, num_workers=0, batch_frames=8).iter_extract(good(videos)))
    assert serial.frame_calls == [8, 7]
    ref_pipe = TinyPipeline()
    for r, path in zip(recs, good(videos)):
        rgb, audio, d = expected_record(path, ref_pipe)
        np.testing.assert_array_equal(r["rgb"], rgb)
        np.testing.assert_array_equal(r["audio"], audio)
        np.testing.assert_array_equal(r["timestamps"], d.timestamps)
        assert r["has_audio"] == (path.endswith("c.mp4") is False)
    c = recs[2]
    assert c["audio_source"] == "zeros (no audio stream)" and not c["audio"].any() and c["audio"].dtype == np.uint8
    # The in-process path gives the same features.
    one = Extractor(TinyPipeline(), num_workers=0).extract(good(videos)[1])
    np.testing.assert_array_equal(one["rgb"], recs[1]["rgb"])


def test_bad_files_are_named_skipped_and_counted_or_stop(videos):
    paths = [str(videos / "a.mp4"), str(videos / "bad" / "text.mp4"), str(videos / "bad" / "empty.mp4"),
             str(videos / "bad" / "short.mp4"), str(videos / "c.mp4")]
    seen = []
    ex = Extractor(TinyPipeline(), num_workers=0)
    ids = [r["id"] for r in ex.iter_extract(paths, skip_bad=True, on_bad=lambda p, m: seen.append((p, m)))]
    assert ids == ["a", "c"]
    assert [p for p, _ in seen] == paths[1:4] and all(m.startswith(p + ": ") for p, m in seen)
    assert len(ex.stats.bad) == 3
    got = []
    with pytest.raises(DataError, match="text.mp4: not a readable video"):
        for r in Extractor(TinyPipeline(), num_workers=0).iter_extract(paths):
            got.append(r["id"])
    assert got == ["a"]  # the video before the bad one was still delivered


def test_round_trip_inspect_dataset_resume(videos, tmp_path):
    from attncluster.cli import main
    from attncluster.data.dataset import VideoDataset

    out = str(tmp_path / "out")
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,labels\na,1 3\nb,0\nc,4\n")  # d is not listed: written without labels
    s = run_extract([str(videos)], out, pipeline=TinyPipeline(), shard_size=3, labels=str(labels),
                    skip_bad=False, num_workers=1, log=lambda m: None)
    assert s["written"] == 4 and s["bad"] == 0
    assert sorted(n for n in os.listdir(out) if n.endswith(".tfrecord")) == [
        "extract-000-00000.tfrecord", "extract-000-00001.tfrecord"]
    manifest = {e["id"]: e for e in read_manifests(out)}
    assert manifest["c"]["audio"] == "zeros (no audio stream)" and manifest["c"]["has_audio"] is False
    assert manifest["a"]["audio"] == "vggish" and manifest["b"]["frames"] == 4

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["inspect", out]) == 0
    lines = {j["id"]: j for j in map(json.loads, buf.getvalue().splitlines())}
    assert lines["a"]["labels"] == [1, 3] and lines["d"]["labels"] == [] and lines["b"]["num_frames"] == 4

    ds = VideoDataset(out, modalities={"rgb": 1024, "audio": 128}, num_classes=5, seg_num=4, train=False,
                      dequantize=False)
    samples = {x["id"]: x for x in ds}
    rgb, _, _ = expected_record(str(videos / "b.mkv"), TinyPipeline())
    np.testing.assert_array_equal(samples["b"]["rgb"].numpy(), rgb)  # 4 frames, seg_num 4: every frame in order

    # Resume: nothing left to do; a new video is the only one extracted.
    s2 = run_extract([str(videos)], out, pipeline=TinyPipeline(), num_workers=0, log=lambda m: None)
    assert (s2["written"], s2["already_done"]) == (0, 4)
    make_video(tmp_path / "e.mp4", 25, Fraction(25))
    s3 = run_extract([str(videos), str(tmp_path / "e.mp4")], out, pipeline=TinyPipeline(), num_workers=0,
                     log=lambda m: None)
    assert (s3["written"], s3["already_done"]) == (1, 4)
    assert sorted(e["id"] for e in read_manifests(out)) == ["a", "b", "c", "d", "e"]


def test_bad_inputs_with_and_without_skip_bad(videos, tmp_path):
    out = str(tmp_path / "o")
    inputs = [str(videos / "a.mp4"), str(videos / "bad")]
    with pytest.raises(DataError, match="empty.mp4: empty file"):
        run_extract(inputs, out, pipeline=TinyPipeline(), num_workers=0, log=lambda m: None)
    assert [e["id"] for e in read_manifests(out)] == ["a"]  # done work is kept on the error
    s = run_extract(inputs, out, pipeline=TinyPipeline(), num_workers=0, skip_bad=True, log=lambda m: None)
    assert (s["written"], s["already_done"], s["bad"]) == (0, 1, 3)


def test_torchrun_ranks_split_videos_exactly_once(videos, tmp_path, monkeypatch):
    out = str(tmp_path / "ranks")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        run_extract(good(videos), out, pipeline=TinyPipeline(), num_workers=0, shard_size=1, log=lambda m: None)
    entries = read_manifests(out)
    assert sorted(e["id"] for e in entries) == ["a", "b", "c", "d"]  # each once
    assert {e["id"]: e["rank"] for e in entries} == {"a": 0, "b": 1, "c": 0, "d": 1}  # i % WORLD_SIZE == RANK
    assert sorted(os.listdir(out)) == ["extract-000-00000.tfrecord", "extract-000-00001.tfrecord",
                                       "extract-001-00000.tfrecord", "extract-001-00001.tfrecord",
                                       "manifest.rank0.jsonl", "manifest.rank1.jsonl"]
    # A resume with another world size still does nothing twice.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run_extract(good(videos), out, pipeline=TinyPipeline(), num_workers=0, log=lambda m: None)["written"] == 0


def test_classify_videos_equals_extract_then_predict(videos, tmp_path):
    import torch
    from safetensors.torch import save_file

    from attncluster.model import AttentionCluster
    from attncluster.predict import predict

    cfg = load_config(None, ["model.feature_dims={rgb: 1024, audio: 128}", "model.num_classes=5", "model.seg_num=3",
                             "model.cluster_nums=2", "model.hidden_sizes=[8]", "data.num_workers=0",
                             "eval.batch_size=2"])
    torch.manual_seed(0)
    model = AttentionCluster(**cfg.model.model_kwargs())
    weights = str(tmp_path / "m.safetensors")
    save_file(model.state_dict(), weights)
    vocab = tmp_path / "vocabulary.csv"
    vocab.write_text("Index,Name\n" + "".join(f"{i},class{i}\n" for i in range(5)))

    out = str(tmp_path / "shards")
    run_extract(good(videos), out, pipeline=TinyPipeline(), num_workers=0, log=lambda m: None)
    predict(cfg, weights, [out], str(tmp_path / "p.jsonl"), top_k=3, vocab=str(vocab), log=lambda m: None)
    via_shards = {r["id"]: r for r in map(json.loads, open(tmp_path / "p.jsonl"))}

    direct = classify_videos(good(videos), cfg, weights, vocab=str(vocab), top_k=3,
                             extractor=Extractor(TinyPipeline(), num_workers=1))
    assert [r["id"] for r in direct] == ["a", "b", "c", "d"]
    for r in direct:
        ref = via_shards[r["id"]]
        assert r["classes"] == ref["classes"] and r["names"] == ref["names"]
        np.testing.assert_allclose(r["scores"], ref["scores"], atol=2e-6)

    # predict_videos writes predict's Kaggle CSV from the same records.
    from attncluster.predict import predict_videos

    predict(cfg, weights, [out], str(tmp_path / "p.csv"), top_k=3, log=lambda m: None)
    predict_videos(cfg, weights, good(videos), output=str(tmp_path / "v.csv"), top_k=3,
                   extractor=Extractor(TinyPipeline(), num_workers=0))
    got_rows, ref_rows = open(tmp_path / "v.csv").read().splitlines(), open(tmp_path / "p.csv").read().splitlines()
    assert got_rows[0] == ref_rows[0] == "VideoId,LabelConfidencePairs" and len(got_rows) == len(ref_rows) == 5
    for g, r in zip(sorted(got_rows[1:]), sorted(ref_rows[1:])):
        gid, gpairs = g.split(",")
        rid, rpairs = r.split(",")
        assert gid == rid and gpairs.split()[::2] == rpairs.split()[::2]
        np.testing.assert_allclose([float(x) for x in gpairs.split()[1::2]], [float(x) for x in rpairs.split()[1::2]],
                                   atol=2e-6)


def test_video_ids():
    assert video_id("/x/clips/abc.mp4") == "abc"
    assert video_id("s3://bucket/v/a.b.mkv") == "a.b"
    assert video_id("https://h/x/v1.webm?sig=1") == "v1"


def test_cli_extract_then_predict_equals_predict_videos_with_random_weights(tmp_path, capsys):
    """The real YouTube-8M pipeline (random weights) through the CLI: extract -> inspect, and predict --videos
    equals predict on the extracted shards with the same checkpoint. One 1-second frame per clip keeps it short."""
    pytest.importorskip("attncluster.extract.features")
    import torch
    from safetensors.torch import save_file

    from attncluster.cli import main
    from attncluster.config import save_config
    from attncluster.model import AttentionCluster

    clips = tmp_path / "clips"
    clips.mkdir()
    make_video(clips / "one.mp4", 25, Fraction(25), audio_hz=440.0)
    make_video(clips / "two.mkv", 12, Fraction(12))
    (clips / "broken.mp4").write_text("not a video")
    cfg = load_config(None, ["model.num_classes=4", "model.seg_num=2", "model.cluster_nums=2",
                             "model.hidden_sizes=[8]", "data.num_workers=0"])
    save_config(cfg, tmp_path / "cfg.yaml")
    torch.manual_seed(0)
    save_file(AttentionCluster(**cfg.model.model_kwargs()).state_dict(), str(tmp_path / "m.safetensors"))
    common = ["--random-weights", "0", "--num-workers", "0"]

    out = str(tmp_path / "out")
    assert main(["extract", str(clips), "--output", out, "--skip-bad", *common]) == 0  # the broken file is skipped
    captured = capsys.readouterr()
    assert f"skipped: {clips / 'broken.mp4'}: not a readable video file (" in captured.err
    assert "skipped 1 bad files" in captured.out
    assert sorted(e["id"] for e in read_manifests(out)) == ["one", "two"]
    # Re-run with all good videos done: nothing to do, and the backbones are not even built.
    assert main(["extract", str(clips / "one.mp4"), str(clips / "two.mkv"), "--output", out, *common]) == 0
    assert "all 2 videos are already in" in capsys.readouterr().out
    assert main(["inspect", out]) == 0
    lines = {j["id"]: j for j in map(json.loads, capsys.readouterr().out.splitlines())}
    assert lines["one"]["num_frames"] == 1 and lines["two"]["num_frames"] == 1

    weights = ["--config", str(tmp_path / "cfg.yaml"), "--weights", str(tmp_path / "m.safetensors"), "--top-k", "3"]
    assert main(["predict", *weights, "--data", out, "--output", str(tmp_path / "p.jsonl")]) == 0
    via_shards = {r["id"]: r for r in map(json.loads, open(tmp_path / "p.jsonl"))}
    capsys.readouterr()
    assert main(["predict", *weights, "--videos", str(clips / "one.mp4"), str(clips / "two.mkv"), *common]) == 0
    direct = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in direct] == ["one", "two"]
    for r in direct:
        assert r["classes"] == via_shards[r["id"]]["classes"]
        np.testing.assert_allclose(r["scores"], via_shards[r["id"]]["scores"], atol=2e-6)


def test_fsspec_url_inputs(videos):
    fsspec = pytest.importorskip("fsspec")
    from attncluster.extract.pipeline import expand_videos

    fs = fsspec.filesystem("memory")
    fs.pipe("/clips_url/a.mp4", (videos / "a.mp4").read_bytes())
    paths = expand_videos(["memory://clips_url"])
    assert len(paths) == 1 and paths[0].startswith("memory://") and paths[0].endswith("/clips_url/a.mp4")
    (rec,) = Extractor(TinyPipeline(), num_workers=0).iter_extract(paths)  # in-process: memory:// is per process
    assert rec["id"] == "a" and rec["source"] == paths[0]
    rgb, _, _ = expected_record(str(videos / "a.mp4"), TinyPipeline())
    np.testing.assert_array_equal(rec["rgb"], rgb)


def test_a_decoder_crash_is_one_bad_file_not_a_dead_job(videos, tmp_path):
    from extract_videos import crashing_decode

    crash = tmp_path / "crash.mp4"
    crash.write_bytes((videos / "a.mp4").read_bytes())
    ex = Extractor(TinyPipeline(), num_workers=2)
    ex.decode_fn = crashing_decode
    seen = []
    paths = [str(videos / "a.mp4"), str(crash), str(videos / "b.mkv"), str(videos / "c.mp4")]
    ids = [r["id"] for r in ex.iter_extract(paths, skip_bad=True, on_bad=lambda p, m: seen.append(m))]
    assert ids == ["a", "b", "c"]
    assert seen == [f"{crash}: the decoder crashed on this file (its process died)"]


def test_weight_paths_and_sampling_from_the_config_extract_section(tmp_path):
    from attncluster.cli import _extract_options, build_parser
    from attncluster.errors import ConfigError

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("extract:\n  inception: /w/classify_image_graph_def.pb\n  pca: /w/yt8m_pca\n  fps: 2\n")
    args = build_parser().parse_args(["extract", "v.mp4", "--output", "o", "--config", str(cfg_path),
                                      "--pca", "/other/pca"])
    opts = _extract_options(args, load_config(cfg_path))
    assert opts["inception"] == "/w/classify_image_graph_def.pb"  # from the config
    assert opts["pca"] == "/other/pca"  # the command line wins
    assert opts["fps"] == 2.0 and opts["max_frames"] == 300 and opts["preset"] == "yt8m"
    cfg_path.write_text("extract:\n  fps: 0\n")
    with pytest.raises(ConfigError, match="extract.fps: must be > 0"):
        load_config(cfg_path)


def test_float_backbone_needs_features_format(videos, tmp_path):
    from attncluster.data.dataset import VideoDataset
    from attncluster.errors import ConfigError

    class FloatPipeline(TinyPipeline):
        """The image preset's contract: float features, no audio."""
        quantized = False

        def __init__(self):
            super().__init__(rgb=12)
            self.modalities = {"rgb": 12}

        def frame_features(self, frames):
            import torch

            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3))).numpy().astype(np.float16)

    with pytest.raises(ConfigError, match="use --format features"):
        run_extract(good(videos), str(tmp_path / "y"), pipeline=FloatPipeline(), num_workers=0, log=lambda m: None)
    out = str(tmp_path / "f")
    run_extract(good(videos), out, pipeline=FloatPipeline(), fmt="features", num_workers=0, log=lambda m: None)
    ds = VideoDataset(out, modalities={"rgb": 12}, num_classes=3, seg_num=2, train=False, fmt="features")
    assert sorted(s["id"] for s in ds) == ["a", "b", "c", "d"]
    assert np.load(os.path.join(out, "a.npz"))["rgb"].dtype == np.float16


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from attncluster.cli import main

    cases = [
        (["extract", str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o")],
         f"error: {tmp_path / 'missing.mp4'}: matches no files (videos)"),
        (["extract", str(tmp_path), "--output", str(tmp_path / "o"), "--shard-size", "0"],
         "error: --shard-size 0: must be >= 1"),
        (["predict", "--config", "c.yaml", "--weights", "w", "--videos", "a.mp4", "--data", "d"],
         "error: predict takes --data (feature shards) or --videos (video files), not both"),
    ]
    (tmp_path / "x.mp4").write_bytes(b"")
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), (argv, err)


def test_progress_bar_shows_videos_and_frames_per_second(videos, tmp_path, capsys):
    run_extract(good(videos)[:2], str(tmp_path / "p"), pipeline=TinyPipeline(), num_workers=0, progress=True,
                log=lambda m: None)
    err = capsys.readouterr().err
    assert "2/2" in err and "video" in err and "frames/s" in err


def test_videos_of_different_sizes_at_native_size(videos, tmp_path):
    """frame_size None (the YouTube-8M preset: the graph resizes): frames keep their size; a batch mixing sizes
    is split by size, and each video's features are those of its own frames."""
    pipe = TinyPipeline()
    pipe.frame_size = None
    make_video(tmp_path / "big.mp4", 30, Fraction(25), size=(96, 64))
    paths = [str(videos / "a.mp4"), str(tmp_path / "big.mp4"), str(videos / "c.mp4")]
    recs = list(Extractor(pipe, num_workers=0, batch_frames=64).iter_extract(paths))
    assert sorted(pipe.frame_calls) == [2, 9]  # one call for the two 64x48 videos (4 + 5 frames), one for 96x64
    ref = TinyPipeline()
    ref.frame_size = None
    for r, p in zip(recs, paths):
        np.testing.assert_array_equal(r["rgb"], ref.frame_features(decode_video(p).frames))


def test_a_folder_contributes_its_video_files_and_says_what_it_left_out(tmp_path, capsys):
    from attncluster.extract.pipeline import expand_videos

    for name in ["a.mp4", "b.MKV", "a.srt", "thumb.jpg", "notes"]:
        (tmp_path / name).write_bytes(b"x")
    assert expand_videos([str(tmp_path)], log=print) == [str(tmp_path / "a.mp4"), str(tmp_path / "b.MKV")]
    out = capsys.readouterr().out
    assert "left out 3 file(s) without a video extension ((no extension), .jpg, .srt)" in out
    # Named explicitly, any file is tried (FFmpeg reads more than the list).
    assert expand_videos([str(tmp_path / "notes")]) == [str(tmp_path / "notes")]
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.doc").write_bytes(b"x")
    with pytest.raises(ConfigError, match="a folder with no video files"):
        expand_videos([str(tmp_path / "only")])


# --- decode workers die with their parent ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids, seconds: float) -> list[int]:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


PARENT = """
import os, sys, time
from attncluster.extract.pipeline import Extractor

class Frames:
    modalities = {"rgb": 4}

def slow_decode(path, *args):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(60)  # busy, as a worker decoding a long video

if __name__ == "__main__":
    ex = Extractor(Frames(), num_workers=1)
    ex.decode_fn = slow_decode
    next(ex.iter_extract([sys.argv[1]]))
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_decode_worker_dies_with_its_killed_parent(tmp_path):
    """kill -9 of the process that owns the decode pool: its busy worker is gone within seconds (it used to live
    on until its work was done, and the multiprocessing resource tracker with it)."""
    import signal
    import subprocess
    import sys
    import time

    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    helpers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        helpers = _children(parent.pid)  # the worker and the resource tracker
        assert worker in helpers and _alive(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait_gone(helpers, 3.0) == []
    finally:
        parent.kill()
        for p in helpers:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_kill_9_of_a_real_extract_leaves_no_worker_and_no_resource_tracker(tmp_path):
    """The real verb, YouTube-8M preset with random weights, 2 decode workers: kill -9 mid-run, and within a few
    seconds none of its helper processes is left."""
    pytest.importorskip("attncluster.extract.features")
    import signal
    import subprocess
    import sys
    import time

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(6):
        make_video(clips / f"v{i}.mp4", 200, Fraction(10))  # 20 s each: 20 frames through Inception each
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.Popen([sys.executable, "-m", "attncluster", "extract", str(clips), "--output", str(tmp_path / "o"),
                          "--random-weights", "0", "--num-workers", "2", "--device", "cpu"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        helpers: list[int] = []
        while time.monotonic() < deadline and len(helpers) < 3 and p.poll() is None:  # 2 workers + tracker
            time.sleep(0.2)
            helpers = _children(p.pid)
        assert len(helpers) >= 3, f"extract ended or never started its workers ({p.poll()})"
        time.sleep(1.0)  # mid-run: the workers are decoding
        helpers = _children(p.pid)
        assert p.poll() is None and len(helpers) >= 3, "extract ended before it could be killed mid-run"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert _wait_gone(helpers, 5.0) == []
    finally:
        p.kill()
