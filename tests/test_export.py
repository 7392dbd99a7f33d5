"""export.py: the ONNX graph against the PyTorch model, int8, the Triton repository, OnnxPredictor, and --onnx."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from attncluster.config import load_config  # noqa: E402
from attncluster.errors import ConfigError, DataError  # noqa: E402
from attncluster.export import OnnxPredictor, export_onnx  # noqa: E402
from attncluster.model import AttentionCluster  # noqa: E402
from conftest import TINY_CLASSES, tiny_overrides  # noqa: E402

quiet = lambda msg: None  # noqa: E731
DIMS = {"rgb": 1024, "audio": 128}


def reference_scores(model, q: dict[str, np.ndarray]) -> np.ndarray:
    """The PyTorch model on the dataset's dequantization, written out here in float64 then cast."""
    f = {m: torch.from_numpy(v.astype(np.float64) * (4.0 / 255) + 4.0 / 512 - 2.0).float() for m, v in q.items()}
    with torch.no_grad():
        return torch.sigmoid(model(f)).numpy()


@pytest.fixture(scope="module")
def small(tiny_data, tmp_path_factory):
    """The conftest tiny model with random weights (rgb 1024 + audio 128, 5 classes, head [16]): its checkpoint,
    config, and fp32 (with a vocabulary) and int8 (with a Triton repository) exports."""
    root = tmp_path_factory.mktemp("export")
    cfg = load_config(None, tiny_overrides(tiny_data))
    (root / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(0)
    model = AttentionCluster(**cfg.model.model_kwargs()).eval()
    torch.save({"model": model.state_dict()}, root / "w.pt")
    vocab = root / "vocabulary.csv"
    vocab.write_text("Index,Name\n" + "".join(f'{i},"name {i}, x"\n' for i in range(TINY_CLASSES)))
    lines: list[str] = []
    fp32 = export_onnx(cfg, str(root / "w.pt"), str(root / "m.onnx"), vocab=str(vocab), log=lines.append)
    int8 = export_onnx(cfg, str(root / "w.pt"), str(root / "q.onnx"), int8=True, triton=str(root / "triton"),
                       triton_name="clf", max_batch_size=64, log=lines.append)
    return {"root": root, "cfg": cfg, "model": model, "fp32": fp32, "int8": int8, "lines": lines, "vocab": vocab}


def test_graph_inputs_outputs_metadata_and_dynamic_axes(small):
    g = onnx.load(str(small["root"] / "m.onnx"))
    inputs = {i.name: i.type.tensor_type for i in g.graph.input}
    assert list(inputs) == ["rgb", "audio"]
    for m, t in inputs.items():
        assert t.elem_type == onnx.TensorProto.UINT8
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        assert isinstance(dims[0], str) and isinstance(dims[1], str) and dims[2] == DIMS[m]  # batch, frames dynamic
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in g.graph.output}
    assert list(outputs) == ["probabilities", "logits"] and all(d[1] == TINY_CLASSES for d in outputs.values())
    meta = {p.key: p.value for p in g.metadata_props}
    assert meta["attncluster.num_classes"] == str(TINY_CLASSES) and meta["attncluster.seg_num"] == "8"
    assert json.loads(meta["attncluster.modalities"]) == DIMS and meta["attncluster.loss"] == "bce"
    assert json.loads(meta["attncluster.vocabulary"]) == [f"name {i}, x" for i in range(TINY_CLASSES)]
    from attncluster import __version__

    assert meta["attncluster.version"] == __version__ and meta["attncluster.precision"] == "fp32"


def test_onnxruntime_matches_pytorch_on_new_shapes(small):
    """Batch sizes and frame counts the export never saw; max |dprob| <= 1e-5 and the same class order."""
    pred = OnnxPredictor(str(small["root"] / "m.onnx"))
    assert (pred.modalities, pred.num_classes, pred.loss, pred.seg_num) == (DIMS, TINY_CLASSES, "bce", 8)
    rng = np.random.default_rng(7)
    for n, length in ((1, 1), (6, 8), (2, 31)):
        q = {m: rng.integers(0, 256, (n, length, f), dtype=np.uint8) for m, f in DIMS.items()}
        ref, got = reference_scores(small["model"], q), pred.scores(q)
        assert np.abs(ref - got).max() <= 1e-5
        np.testing.assert_array_equal(np.argsort(-ref, axis=1), np.argsort(-got, axis=1))
        np.testing.assert_allclose(pred.logits(q), np.log(ref / (1 - ref)), atol=1e-4)
    parity = small["fp32"]["parity"]
    assert parity.ok and parity.videos == 7
    assert any(line.startswith("export: parity onnxruntime vs PyTorch: max |dprob|") and line.endswith("ok")
               for line in small["lines"])


def test_int8_quantizes_the_head_only_and_stays_close(small):
    g = onnx.load(str(small["root"] / "q.onnx"))
    ops = [n.op_type for n in g.graph.node]
    assert ops.count("MatMulInteger") == 2  # hidden 16, logits
    assert "Gemm" not in ops and ops.count("MatMul") == 4  # attention: score and pooling per modality, float
    int8_weights = [t for t in g.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    features = 2 * (1024 + 128)  # 2 clusters per modality
    assert sorted(int(np.prod(t.dims)) for t in int8_weights) == sorted([features * 16, 16 * TINY_CLASSES])
    assert small["int8"]["size_bytes"] < small["int8"]["fp32_size_bytes"]
    pred = OnnxPredictor(str(small["root"] / "q.onnx"))
    assert pred.precision == "int8"
    q = {m: np.random.default_rng(3).integers(0, 256, (16, 8, f), dtype=np.uint8) for m, f in DIMS.items()}
    diff = np.abs(reference_scores(small["model"], q) - pred.scores(q)).max()
    assert 0 < diff < 0.02  # quantized (not bit-equal) yet close


def parse_pbtxt(text: str):
    """A minimal protobuf text-format parser: fields -> list of values; messages are dicts, lists flattened."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.sub(r"#.*", "", text))
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                if tokens[pos] == ",":
                    pos += 1
                    continue
                items.append(value())
            pos += 1
            return items
        return tok[1:-1] if tok.startswith('"') else (int(tok) if re.fullmatch(r"-?\d+", tok) else tok)

    def message(end):
        nonlocal pos
        out: dict = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            out.setdefault(key, []).extend(v if isinstance(v, list) and key != "dims" and key != "preferred_batch_size"
                                           else [v])
            if pos < len(tokens) and tokens[pos] == ",":
                pos += 1
        pos += 1
        return out

    return message(None)


def test_triton_repository_layout_and_config(small):
    repo = small["root"] / "triton"
    assert (repo / "clf" / "1" / "model.onnx").read_bytes() == (small["root"] / "q.onnx").read_bytes()
    cfg = parse_pbtxt((repo / "clf" / "config.pbtxt").read_text())
    assert cfg["name"] == ["clf"] and cfg["platform"] == ["onnxruntime_onnx"] and cfg["max_batch_size"] == [64]
    inputs = {i["name"][0]: i for i in cfg["input"]}
    assert list(inputs) == ["rgb", "audio"]
    for m, i in inputs.items():
        assert i["data_type"] == ["TYPE_UINT8"] and i["dims"] == [[-1, DIMS[m]]]
    outputs = {o["name"][0]: o for o in cfg["output"]}
    assert list(outputs) == ["probabilities", "logits"]
    assert all(o["data_type"] == ["TYPE_FP32"] and o["dims"] == [[TINY_CLASSES]] for o in outputs.values())
    (batching,) = cfg["dynamic_batching"]
    (preferred,) = batching["preferred_batch_size"]
    assert preferred == sorted(preferred) and max(preferred) == 64 and batching["max_queue_delay_microseconds"][0] > 0
    # The names Triton will feed are the graph's own input and output names.
    g = onnx.load(str(repo / "clf" / "1" / "model.onnx"))
    assert [i.name for i in g.graph.input] == list(inputs) and [o.name for o in g.graph.output] == list(outputs)


def test_float_input_export_takes_float_features(small, tmp_path):
    export_onnx(small["cfg"], str(small["root"] / "w.pt"), str(tmp_path / "f.onnx"), input_dtype="float32", log=quiet)
    pred = OnnxPredictor(str(tmp_path / "f.onnx"))
    assert pred.input_dtype == "float32"
    q = {m: np.random.default_rng(5).integers(0, 256, (3, 4, f), dtype=np.uint8) for m, f in DIMS.items()}
    f = {m: (v * np.float32(4 / 255) + np.float32(4 / 512 - 2)).astype(np.float32) for m, v in q.items()}
    assert np.abs(pred.scores(f) - reference_scores(small["model"], q)).max() <= 1e-5
    with pytest.raises(DataError, match="takes uint8"):
        OnnxPredictor(str(small["root"] / "m.onnx")).scores(f)


# ---------------------------------------------------------------------------------------------- input dtype


@pytest.fixture(scope="module")
def video_level(tmp_path_factory):
    """A video-level model (seg_num 1) and a video-level shard (float mean_rgb / mean_audio), as the shipped
    youtube8m_video_level config reads: its checkpoint and config."""
    from attncluster.data.tfrecord import TFRecordWriter
    from attncluster.data.yt8m import encode_example

    root = tmp_path_factory.mktemp("video_level")
    rng = np.random.default_rng(0)
    with TFRecordWriter(str(root / "validate0000.tfrecord")) as w:
        for i in range(6):
            feats = {m: rng.standard_normal(f).astype(np.float32) for m, f in DIMS.items()}
            w.write(encode_example(f"v{i}", [i % TINY_CLASSES], feats))
    cfg = load_config(None, [f"data.valid={root / 'validate0000.tfrecord'}", "data.format=yt8m",
                             f"model.num_classes={TINY_CLASSES}", "model.seg_num=1", "model.cluster_nums=1",
                             "model.hidden_sizes=[16]", "data.num_workers=0"])
    torch.manual_seed(1)
    model = AttentionCluster(**cfg.model.model_kwargs()).eval()
    torch.save({"model": model.state_dict()}, root / "w.pt")
    return root, cfg, model


@pytest.mark.slow  # an export, ~9 s; test_export_refuses_uint8_for_float_data_and_auto_without_data is the fast one
def test_export_takes_the_input_dtype_from_float_video_level_data(video_level, tmp_path):
    """Before, the video-level config silently gave a uint8 graph that refused its own data at predict --onnx."""
    root, cfg, model = video_level
    lines: list[str] = []
    export_onnx(cfg, str(root / "w.pt"), str(tmp_path / "v.onnx"), log=lines.append)
    g = onnx.load(str(tmp_path / "v.onnx"))
    assert {i.type.tensor_type.elem_type for i in g.graph.input} == {onnx.TensorProto.FLOAT}
    assert any(line.startswith("export: float32 inputs (from the data: float32 features in ") for line in lines)
    from attncluster.data.yt8m import YT8MShard

    videos = list(YT8MShard(str(root / "validate0000.tfrecord"), modalities=DIMS, num_classes=TINY_CLASSES))
    feats = {m: np.stack([v.features[m] for v in videos]) for m in DIMS}  # (6, 1, F) float32, as the data holds
    with torch.no_grad():
        ref = torch.sigmoid(model({m: torch.from_numpy(x) for m, x in feats.items()})).numpy()
    assert np.abs(OnnxPredictor(str(tmp_path / "v.onnx")).scores(feats) - ref).max() <= 1e-5


def test_export_refuses_uint8_for_float_data_and_auto_without_data(video_level, small, tmp_path):
    import dataclasses

    root, cfg, _ = video_level
    with pytest.raises(ConfigError) as e:
        export_onnx(cfg, str(root / "w.pt"), str(tmp_path / "u.onnx"), input_dtype="uint8", log=quiet)
    assert "--input-dtype uint8: the config's data holds float features" in str(e.value) and "\n" not in str(e.value)
    gone = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, valid=[str(tmp_path / "missing.tfrecord")],
                                                             train=[]))
    with pytest.raises(ConfigError, match=r"cannot choose the graph's input dtype from the data \(data.valid: .*"
                                          r"missing.tfrecord.*pass --input-dtype uint8 .* or float32"):
        export_onnx(gone, str(root / "w.pt"), str(tmp_path / "u.onnx"), log=quiet)
    assert list(tmp_path.iterdir()) == []
    # Frame-level (uint8) data: auto keeps uint8 inputs (the small fixture's graphs were exported with auto).
    assert small["lines"][0].startswith("export: uint8 inputs (from the data: uint8 features in ")


# ---------------------------------------------------------------------------------------------- a full disk


@pytest.mark.slow  # an export, ~8 s; test_a_full_disk_names_the_triton_files is the fast one of the same writer
def test_a_full_disk_during_export_is_one_line_naming_the_output(small, tmp_path, capsys):
    from test_outputs import file_size_limit

    root = small["root"]
    out = tmp_path / "m.onnx"
    with file_size_limit(20_000):  # the graph is about 90 kB
        code, _, err = cli(capsys, "export", "--config", root / "config.yaml", "--weights", root / "w.pt",
                           "--output", out)
    assert code == 2 and err.startswith(f"error: {out}: cannot write: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_names_the_triton_files(small, tmp_path):
    from attncluster.errors import FileError
    from attncluster.export import write_triton_repository
    from test_outputs import file_size_limit

    with file_size_limit(20_000), pytest.raises(FileError) as e:
        write_triton_repository(str(small["root"] / "m.onnx"), str(tmp_path / "triton"), name="clf")
    assert str(e.value).startswith(f"{tmp_path / 'triton' / 'clf' / '1' / 'model.onnx'}: cannot write: ")
    assert [p.name for p in (tmp_path / "triton" / "clf" / "1").iterdir()] == []


def test_bad_inputs_are_one_line_errors(small, tmp_path):
    with pytest.raises(DataError, match="not an ONNX model"):
        OnnxPredictor(str(small["root"] / "w.pt"))
    bare = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid("", 18)])
    bare.ir_version = 8
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(DataError, match="no attncluster metadata"):
        OnnxPredictor(str(tmp_path / "bare.onnx"))
    pred = OnnxPredictor(str(small["root"] / "m.onnx"))
    good = {m: np.zeros((2, 3, f), np.uint8) for m, f in DIMS.items()}
    with pytest.raises(DataError, match=r"'audio': expected \(videos, frames, 128\)"):
        pred.scores({**good, "audio": np.zeros((2, 3, 6), np.uint8)})
    with pytest.raises(DataError, match="takes uint8"):
        pred.scores({**good, "rgb": np.zeros((2, 3, 1024), np.float32)})
    with pytest.raises(DataError, match="missing modality 'rgb'"):
        pred.scores({"audio": good["audio"]})
    with pytest.raises(ConfigError, match="--opset 11: unsupported"):
        export_onnx(small["cfg"], str(small["root"] / "w.pt"), str(tmp_path / "x.onnx"), opset=11, log=quiet)


# ---------------------------------------------------------------------------------------------- CLI, --onnx


def cli(capsys, *args) -> tuple[int, str, str]:
    """``attncluster ARGS`` in this process (the same main() the console script runs): exit status, stdout, stderr."""
    from attncluster.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_errors_are_one_line(small, tmp_path, capsys):
    root = small["root"]
    for extra, needles in ((["-o", "model.num_classes=7"], ["w.pt", "does not match the config's model"]),
                           (["--opset", "11"], ["--opset 11: unsupported"])):
        code, _, err = cli(capsys, "export", "--config", root / "config.yaml", *extra, "--weights", root / "w.pt",
                           "--output", tmp_path / "x.onnx")
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert all(n in lines[0] for n in needles), lines[0]
    assert not (tmp_path / "x.onnx").exists()
    code, _, err = cli(capsys, "eval", "--onnx", root / "w.pt", "--data", tmp_path)
    assert code == 2 and err.startswith("error: ") and "not an ONNX model" in err and err.count("\n") == 1


def test_eval_onnx_equals_eval_weights(small, capsys):
    root = small["root"]
    code, by_torch, _ = cli(capsys, "eval", "--config", root / "config.yaml", "--weights", root / "w.pt",
                            "--device", "cpu")
    code2, by_onnx, _ = cli(capsys, "eval", "--config", root / "config.yaml", "--onnx", root / "m.onnx")
    assert code == code2 == 0
    torch_m, onnx_m = (dict(re.findall(r"(GAP|Hit@1|PERR|mAP|loss) ([\d.]+)", s)) for s in (by_torch, by_onnx))
    assert set(torch_m) == {"GAP", "Hit@1", "PERR", "mAP", "loss"} and "(40 videos)" in by_onnx
    for key, value in torch_m.items():
        assert float(onnx_m[key]) == pytest.approx(float(value), abs=1.5e-4), key  # printed to 4 decimals


def test_predict_onnx_equals_predict_weights(small, tiny_data, tmp_path, capsys):
    from attncluster.predict import predict

    root = small["root"]
    predict(small["cfg"], str(root / "w.pt"), [str(tiny_data / "valid")], str(tmp_path / "t.jsonl"), top_k=3,
            vocab=str(small["vocab"]), device="cpu", log=quiet)
    # No config and no --vocab: model settings and class names come from the graph.
    code, out, _ = cli(capsys, "predict", "--onnx", root / "m.onnx", "--data", tiny_data / "valid", "--output",
                       tmp_path / "o.jsonl", "--top-k", 3)
    assert code == 0 and "predict: 40 videos" in out
    a = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 40
    names = {int(r["Index"]): r["Name"] for r in csv.DictReader(small["vocab"].open())}
    for x, y in zip(a, b):
        assert x["id"] == y["id"] and x["classes"] == y["classes"] and x["names"] == y["names"]
        assert y["names"] == [names[c] for c in y["classes"]]
        np.testing.assert_allclose(x["scores"], y["scores"], atol=2e-6)


def test_help_documents_export_and_onnx_options():
    from attncluster.cli import build_parser

    verbs = next(a for a in build_parser()._actions if a.dest == "command").choices
    for verb in ("export", "eval", "predict"):
        text = verbs[verb].format_help()
        for action in verbs[verb]._actions:
            assert all(opt in text for opt in action.option_strings) and action.help, (verb, action.option_strings)
        assert verb == "export" or "--onnx" in text
