"""Export a trained model to ONNX (optionally int8), a Triton model repository, and run it with onnxruntime.

The graph (``export_onnx``):

* one input per modality, named after it, of the dtype the config's data has (``input_dtype="auto"``, the default:
  the first record of ``data.valid``, else ``data.train``, is read): ``(batch, frames, F)`` **uint8** for
  YouTube-8M-quantized features (frame-level shards; 4x fewer bytes than float32), dequantized inside the graph
  exactly as the readers do (``q * 4/255 + 4/512 - 2`` in float32), or **float32** for float features (video-level
  ``mean_rgb`` / ``mean_audio``, float npz or pickles). When the config's data cannot be read, export refuses with
  one line asking for ``--input-dtype uint8`` or ``float32``; an explicit ``uint8`` for float data is refused too;
* both the batch and the frames axes are dynamic (attention pools over any number of frames);
* outputs ``probabilities`` (sigmoid for bce models, softmax for ce) and ``logits``, both ``(batch, num_classes)``;
* metadata (``metadata_props``, keys ``attncluster.*``): num_classes, modalities with their dims, seg_num, loss,
  precision, input dtype, attncluster version, and the class names when a vocabulary is given.

The model is ``model.py``'s ``AttentionCluster`` in eval mode, traced through ``torch.onnx.export(dynamo=True)``:
whatever the eval forward does (dropout included) is what the graph computes. The dynamo exporter is the maintained
one (the TorchScript exporter is deprecated since torch 2.9) and gives a clean graph: parameters keep their names
(``model.hidden.0.weight``), which is how ``--int8`` finds the MLP head, and each ``nn.Linear`` of the head is one
``Gemm``.

A parity check runs at every export: onnxruntime against PyTorch on the same random uint8 inputs (two batches of
different sizes and frame counts, exercising both dynamic axes); max |Δprob| <= 1e-5 and identical top-20.

``OnnxPredictor`` runs an exported file with onnxruntime and numpy only (no model construction); it is the
``--onnx`` path of ``predict``, ``eval`` and ``serve``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attncluster.data.records import DEQUANT_BIAS, DEQUANT_SCALE, dequantize
from attncluster.errors import AttnClusterError, ConfigError, DataError, printable
from attncluster.inference import Predictor
from attncluster.outputs import atomic_copy, atomic_path, atomic_write_text, check_output, scratch_file

META_PREFIX = "attncluster."
REQUIRED_META = ("num_classes", "modalities", "seg_num", "loss")
DEFAULT_OPSET = 18
# The dynamo exporter emits opset 18 natively and converts to the others; onnxruntime 1.17 (our floor) runs up to 20.
SUPPORTED_OPSETS = (18, 19, 20)
PARITY_ATOL = 1e-5
PARITY_TOP_K = 20
OUTPUTS = ("probabilities", "logits")
INPUT_DTYPES = ("uint8", "float32")
INPUT_DTYPE_CHOICES = ("auto", *INPUT_DTYPES)


def _require(module: str):
    """Import an optional dependency of the ``export`` extra, or a one-line ConfigError saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed; install the export extra: "
                          f"pip install 'attncluster[export]'") from None


# --------------------------------------------------------------------------------------------------------------------
# The graph


def _graph_module(model, modalities: list[str], loss: str, input_dtype: str):
    """``AttentionCluster`` wrapped to take one tensor per modality and return (probabilities, logits)."""
    import torch
    from torch import nn

    class ExportGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            feats = {}
            for m, x in zip(modalities, inputs):
                # Same float32 arithmetic as data.records.dequantize: cast, times scale, plus bias.
                feats[m] = x.to(torch.float32) * DEQUANT_SCALE + DEQUANT_BIAS if input_dtype == "uint8" else x
            logits = self.model(feats)
            probs = torch.softmax(logits, dim=1) if loss == "ce" else torch.sigmoid(logits)
            return probs, logits

    return ExportGraph().eval()


def parity_inputs(modalities: dict[str, int], seg_num: int, input_dtype: str = "uint8",
                  seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Two random batches, (4, seg_num) and (3, seg_num + 3) frames: both dynamic axes take two values."""
    rng = np.random.default_rng(seed)
    out = []
    for n, length in ((4, max(seg_num, 2)), (3, max(seg_num, 2) + 3)):
        batch = {m: rng.integers(0, 256, (n, length, f), dtype=np.uint8) for m, f in modalities.items()}
        if input_dtype == "float32":
            batch = {m: dequantize(v) for m, v in batch.items()}
        out.append(batch)
    return out


@dataclass
class Parity:
    """onnxruntime against PyTorch on the same inputs."""

    max_abs_prob: float
    top_k: int
    top_k_identical: int
    videos: int

    @property
    def ok(self) -> bool:
        return self.max_abs_prob <= PARITY_ATOL and self.top_k_identical == self.videos

    def line(self, what: str = "onnxruntime vs PyTorch", verdict: bool = True) -> str:
        text = (f"parity {what}: max |dprob| {self.max_abs_prob:.2e}, top-{self.top_k} identical for "
                f"{self.top_k_identical}/{self.videos} videos")
        return text + (f" (limits {PARITY_ATOL:.0e}, all): {'ok' if self.ok else 'FAILED'}" if verdict else "")


def _top_k_same(ref: np.ndarray, got: np.ndarray, k: int) -> np.ndarray:
    """Per row: the k highest classes of ``got`` are those of ``ref`` in the same order.

    Two classes whose reference scores are equal to within float32 rounding (1e-7) may swap: their order is
    arbitrary in both, and no tolerance on the scores could fix it.
    """
    same = np.empty(len(ref), dtype=bool)
    for i, (r, g) in enumerate(zip(ref, got)):
        rk, gk = np.argsort(-r, kind="stable")[:k], np.argsort(-g, kind="stable")[:k]
        same[i] = np.array_equal(rk, gk) or (set(rk) == set(gk) and np.allclose(r[rk], r[gk], rtol=0, atol=1e-7))
    return same


def compare(reference: list[np.ndarray], got: list[np.ndarray], k: int) -> Parity:
    ref, out = np.concatenate(reference), np.concatenate(got)
    k = min(k, ref.shape[1])
    return Parity(float(np.abs(ref - out).max()), k, int(_top_k_same(ref, out, k).sum()), len(ref))


def _onnx_proto(graph, example: tuple, modalities: list[str], opset: int):
    """``torch.onnx.export`` (dynamo) with dynamic batch and frames axes, its progress chatter silenced."""
    import torch

    batch, frames = torch.export.Dim("batch"), torch.export.Dim("frames")
    shapes = {m: {0: batch, 1: frames} for m in modalities}
    quiet = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, example, None, input_names=modalities, output_names=list(OUTPUTS),
                                        dynamic_shapes=(tuple(shapes[m] for m in modalities),),
                                        opset_version=opset, dynamo=True, verbose=False, external_data=False)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return program.model_proto


def _set_metadata(proto, meta: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = META_PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def head_weight_names(model) -> list[str]:
    """Names of the MLP head's weight matrices (hidden layers and logits), as the exported graph keeps them."""
    names = [f"model.hidden.{i}.weight" for i in range(len(model.hidden))]
    return names + ["model.logits.weight"]


def head_nodes(proto, weights: list[str]) -> list[str]:
    """The MatMul / Gemm nodes that multiply by one of ``weights`` (initializers): the head, not the attention."""
    wanted = set(weights)
    nodes = [n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and wanted & set(n.input)]
    if len(nodes) != len(wanted):
        raise ConfigError(f"int8: found {len(nodes)} head MatMul/Gemm nodes in the graph, expected {len(wanted)} "
                          f"(one per head layer)")
    return nodes


def quantize_head(src: str, dst: str, nodes: list[str]) -> None:
    """Dynamic int8 quantization of ``nodes`` (the head): int8 weights, activations quantized per batch at run time."""
    _require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)  # the quantizer logs a generic "consider pre-processing" warning on every run
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            # quantize_dynamic first rewrites each Gemm as MatMul + Add, naming the MatMul "<gemm name>_MatMul".
            quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                             per_channel=True, nodes_to_quantize=[*nodes, *(f"{n}_MatMul" for n in nodes)])
    finally:
        root.setLevel(level)


def data_input_dtype(cfg) -> tuple[str | None, str]:
    """The dtype the config's data holds: ``("uint8" | "float32", where)`` from the first record of ``data.valid``
    (else ``data.train``), or ``(None, why not)`` when neither can be read here."""
    from attncluster.data.dataset import _close, open_shard, resolve_shards

    reasons = []
    for key in ("valid", "train"):
        specs = list(getattr(cfg.data, key) or [])
        if not specs:
            reasons.append(f"data.{key} is not set")
            continue
        try:
            shards = resolve_shards(specs, cfg.data.format)
            for path in shards[:8]:
                shard = open_shard(path, fmt=cfg.data.format, modalities=dict(cfg.model.feature_dims),
                                   num_classes=cfg.model.num_classes, skip_corrupt=True)
                try:
                    for video in shard:
                        arrays = [video.features[m] for m in cfg.model.feature_dims if m in video.features]
                        if arrays:
                            dtype = "uint8" if all(a.dtype == np.uint8 for a in arrays) else "float32"
                            return dtype, f"{arrays[0].dtype} features in {path}"
                finally:
                    _close(shard)
            reasons.append(f"data.{key} ({' '.join(specs)}) holds no readable video")
        except (AttnClusterError, OSError) as e:
            reasons.append(f"data.{key}: {printable(str(e), 200)}")
    return None, "; ".join(reasons)


def resolve_input_dtype(cfg, input_dtype: str = "auto") -> tuple[str, str]:
    """``--input-dtype``: ``auto`` -> the data's dtype (:func:`data_input_dtype`); returns ``(dtype, why)``.

    Raises:
        ConfigError: ``auto`` and the config's data cannot be read, or ``uint8`` for float data (a uint8 graph
            would refuse every float feature at ``predict --onnx``).
    """
    if input_dtype not in INPUT_DTYPE_CHOICES:
        raise ConfigError(f"--input-dtype {input_dtype}: use one of {', '.join(INPUT_DTYPE_CHOICES)}")
    found, where = data_input_dtype(cfg)
    if input_dtype == "auto":
        if found is None:
            raise ConfigError(f"export: cannot choose the graph's input dtype from the data ({where}); pass "
                              "--input-dtype uint8 (quantized frame-level YouTube-8M features) or float32 (float "
                              "features: video-level mean_rgb / mean_audio, float npz or pickles)")
        return found, f"from the data: {where}"
    if input_dtype == "uint8" and found == "float32":
        raise ConfigError(f"--input-dtype uint8: the config's data holds float features ({where}); a uint8 graph "
                          "could not take them; use --input-dtype float32 (or auto)")
    return input_dtype, "as asked"


def export_onnx(cfg, weights: str, output: str, *, opset: int = DEFAULT_OPSET, int8: bool = False,
                triton: str | None = None, triton_name: str = "attncluster", max_batch_size: int = 256,
                vocab: str | None = None, input_dtype: str = "auto", log=print) -> dict[str, Any]:
    """The ``export`` verb: config + weights -> ``output`` (.onnx); with ``int8`` the head is int8.

    The fp32 graph always passes the parity check against PyTorch before anything is written; the int8 graph's
    difference from PyTorch is measured on the same inputs and reported (it is not 1e-5 by construction).

    Returns a summary: ``parity`` (fp32), ``int8_parity`` (with ``int8``), ``size_bytes``, ``fp32_size_bytes``,
    ``triton`` (the config.pbtxt path).
    """
    import torch

    from attncluster import __version__
    from attncluster.inference import load_model, load_vocabulary

    if opset not in SUPPORTED_OPSETS:
        raise ConfigError(f"--opset {opset}: unsupported; use one of {', '.join(map(str, SUPPORTED_OPSETS))}")
    if input_dtype not in INPUT_DTYPE_CHOICES:
        raise ConfigError(f"--input-dtype {input_dtype}: use one of {', '.join(INPUT_DTYPE_CHOICES)}")
    if Path(output).suffix.lower() != ".onnx":
        raise ConfigError(f"--output {output}: expected a .onnx file name")
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size {max_batch_size}: must be >= 1")
    if triton:
        check_triton_name(triton_name)
    check_output(output)  # a directory or an unwritable folder fails now; a killed export's temporary files go
    onnx = _require("onnx")
    _require("onnxruntime")
    input_dtype, why = resolve_input_dtype(cfg, input_dtype)
    log(f"export: {input_dtype} inputs ({why})")
    model = load_model(cfg, weights, "cpu")  # strict: a checkpoint that disagrees with the config is one error line
    names = load_vocabulary(vocab, cfg.model.num_classes) if vocab else None
    modalities = dict(cfg.model.feature_dims)
    loss = cfg.train.loss
    graph = _graph_module(model, list(modalities), loss, input_dtype)
    batches = parity_inputs(modalities, cfg.model.seg_num, input_dtype)
    example = tuple(torch.from_numpy(batches[0][m]) for m in modalities)
    with torch.no_grad():
        proto = _onnx_proto(graph, example, list(modalities), opset)
        reference = [graph(*(torch.from_numpy(b[m]) for m in modalities))[0].numpy() for b in batches]
    meta: dict[str, Any] = {"num_classes": str(cfg.model.num_classes), "modalities": modalities,
                            "seg_num": str(cfg.model.seg_num), "loss": loss, "input_dtype": input_dtype,
                            "precision": "fp32", "version": __version__, "model": cfg.model.model_kwargs()}
    if names is not None:
        meta["vocabulary"] = names
    _set_metadata(proto, meta)

    out = Path(output)
    # The one writer: the graph is written to a temporary file next to the output and renamed over it only after
    # the parity check (and, with int8, the quantization) passed; a full disk is one error naming the output.
    with atomic_path(out) as target, scratch_file(out, "fp32.") as scratch:
        fp32 = str(scratch if int8 else target)
        onnx.save(proto, fp32)
        parity = compare(reference, [OnnxPredictor(fp32).scores(b) for b in batches], PARITY_TOP_K)
        log(f"export: {parity.line()}")
        if not parity.ok:
            raise ConfigError(f"{output}: exported graph disagrees with PyTorch ({parity.line()}); nothing written")
        result: dict[str, Any] = {"parity": parity, "fp32_size_bytes": os.path.getsize(fp32)}
        final = fp32
        if int8:
            q = str(target)
            quantize_head(fp32, q, head_nodes(proto, head_weight_names(model)))
            qproto = onnx.load(q)
            _set_metadata(qproto, {**meta, "precision": "int8"})
            onnx.save(qproto, q)
            p8 = compare(reference, [OnnxPredictor(q).scores(b) for b in batches], PARITY_TOP_K)
            log(f"export: {p8.line('int8 onnxruntime vs PyTorch fp32', verdict=False)} (not held to the fp32 limit: "
                f"measure int8 by its GAP change, attncluster eval --onnx)")
            result["int8_parity"] = p8
            final = q
        result["size_bytes"] = os.path.getsize(final)
    log(f"export: {output} ({'int8 head' if int8 else 'fp32'}, {result['size_bytes'] / 2**20:.1f} MiB"
        + (f"; fp32 {result['fp32_size_bytes'] / 2**20:.1f} MiB" if int8 else "") + ")")
    if triton:
        result["triton"] = write_triton_repository(str(out), triton, name=triton_name, max_batch_size=max_batch_size)
        log(f"export: Triton model repository {result['triton']}")
    return result


# --------------------------------------------------------------------------------------------------------------------
# Triton Inference Server


def triton_config(name: str, modalities: dict[str, int], num_classes: int, input_dtype: str = "uint8",
                  max_batch_size: int = 256, preferred: tuple[int, ...] | None = None,
                  max_queue_delay_us: int = 2000) -> str:
    """``config.pbtxt`` text for the exported graph on Triton's onnxruntime backend."""
    if preferred is None:
        preferred = tuple(b for b in (16, 64, max_batch_size // 2, max_batch_size) if 0 < b <= max_batch_size)
        preferred = tuple(sorted(set(preferred)))
    ttype = "TYPE_UINT8" if input_dtype == "uint8" else "TYPE_FP32"
    inputs = ",\n".join(f'  {{\n    name: "{m}"\n    data_type: {ttype}\n    dims: [ -1, {f} ]\n  }}'
                        for m, f in modalities.items())
    outputs = ",\n".join(f'  {{\n    name: "{o}"\n    data_type: TYPE_FP32\n    dims: [ {num_classes} ]\n  }}'
                         for o in OUTPUTS)
    return (f"# attncluster export: Attention Cluster, {num_classes} classes. Inputs are (frames, F) per video;\n"
            f"# Triton batches requests whose frame counts match: send every video sampled to the same frame count.\n"
            f'name: "{name}"\n'
            f'platform: "onnxruntime_onnx"\n'
            f"max_batch_size: {max_batch_size}\n"
            f"input [\n{inputs}\n]\n"
            f"output [\n{outputs}\n]\n"
            f"dynamic_batching {{\n"
            f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
            f"}}\n")


def check_triton_name(name: str) -> None:
    if not name or any(c in name for c in "/\\ \"") or name.startswith("."):
        raise ConfigError(f"--triton-name {name!r}: a model name without slashes, spaces or quotes is expected")


def write_triton_repository(model_path: str, repo: str, name: str = "attncluster", max_batch_size: int = 256) -> str:
    """``repo/name/1/model.onnx`` (a copy of ``model_path``) and ``repo/name/config.pbtxt``; returns the config path."""
    check_triton_name(name)
    pred = OnnxPredictor(model_path)
    model = Path(repo) / name / "1" / "model.onnx"
    config = Path(repo) / name / "config.pbtxt"
    for path in (model, config):
        check_output(path, "--triton")
    atomic_copy(model_path, model)  # each file through the one writer: whole or not at all, errors name the file
    atomic_write_text(config, triton_config(name, pred.modalities, pred.num_classes, pred.input_dtype,
                                            max_batch_size))
    return str(config)


# --------------------------------------------------------------------------------------------------------------------
# Running an exported graph


class OnnxPredictor(Predictor):
    """An exported ``.onnx`` file run by onnxruntime: an ``attncluster.inference.Predictor`` without a PyTorch model.

    Args:
        path: a graph written by ``attncluster export`` (fp32 or int8).
        providers: onnxruntime execution providers (default: CUDA when onnxruntime has it, then CPU).
        threads: onnxruntime intra-op threads (default: one per core; under torchrun the cores divided by the
            ranks on this machine, LOCAL_WORLD_SIZE).

    Attributes (from the graph's metadata): ``modalities`` (name -> F, input order), ``num_classes``, ``loss``,
    ``seg_num``, ``vocabulary`` (class names or None), ``precision`` (fp32 / int8), ``input_dtype`` (uint8 / float32).
    """

    def __init__(self, path: str, providers: list[str] | None = None, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        self.path = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{path}: ONNX model not found")
        with open(path, "rb") as f:
            head = f.read(64)
        if not head or head.startswith((b"PK", b"\x80")) or head.lstrip()[:1] in (b"{", b"<"):
            raise DataError(f"{path}: not an ONNX model (a torch checkpoint? pass it as --weights)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: no per-session warnings on the terminal
        if threads is None and int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) > 1:
            # Under torchrun every rank on this machine has its own session: share the cores instead of each
            # taking all of them (onnxruntime ignores OMP_NUM_THREADS).
            threads = max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"]))
        if threads:
            opts.intra_op_num_threads = int(threads)
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception classes for unreadable graphs
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: not a readable ONNX model ({first})") from None
        meta = {k[len(META_PREFIX):]: v for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                if k.startswith(META_PREFIX)}
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            keys = ", ".join(META_PREFIX + k for k in missing)
            raise DataError(f"{path}: ONNX model has no attncluster metadata ({keys} missing); export it with "
                            f"attncluster export")
        try:
            self.modalities = {str(m): int(f) for m, f in json.loads(meta["modalities"]).items()}
            self.num_classes = int(meta["num_classes"])
            self.seg_num = int(meta["seg_num"])
            self.vocabulary = json.loads(meta["vocabulary"]) if "vocabulary" in meta else None
        except (ValueError, AttributeError, TypeError):
            raise DataError(f"{path}: malformed attncluster metadata in the ONNX model") from None
        self.loss = meta["loss"]
        self.precision = meta.get("precision", "fp32")
        self.metadata = meta
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != set(self.modalities) or [o.name for o in self.session.get_outputs()] != list(OUTPUTS):
            raise DataError(f"{path}: graph inputs {sorted(inputs)} / outputs do not match its metadata "
                            f"(modalities {list(self.modalities)}, outputs {list(OUTPUTS)})")
        self.input_dtype = "uint8" if inputs[next(iter(self.modalities))].type == "tensor(uint8)" else "float32"

    def feeds(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check and convert ``{modality: (N, L, F)}`` to the graph's input dtype (uint8 -> float is exact)."""
        out = {}
        n = length = None
        for m, f in self.modalities.items():
            if m not in features:
                raise DataError(f"missing modality '{m}' (the model takes {', '.join(self.modalities)})")
            x = np.asarray(features[m])
            if x.ndim != 3 or x.shape[2] != f:
                raise DataError(f"'{m}': expected (videos, frames, {f}) features, got shape {tuple(x.shape)}")
            if (n, length) != (None, None) and x.shape[:2] != (n, length):
                raise DataError(f"'{m}': {x.shape[0]} videos x {x.shape[1]} frames, but the other modalities have "
                                f"{n} x {length}")
            n, length = x.shape[:2]
            if self.input_dtype == "uint8":
                if x.dtype != np.uint8:
                    raise DataError(f"'{m}': {self.path} takes uint8 (dataset-quantized) features, got {x.dtype}; "
                                    f"export with --input-dtype float32 for float features")
            else:
                x = dequantize(x) if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
            out[m] = np.ascontiguousarray(x)
        return out

    def run(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, logits), each (N, num_classes) float32, both computed in the graph (no torch)."""
        probs, logits = self.session.run(list(OUTPUTS), self.feeds(features))
        return probs, logits


def model_config(predictor: OnnxPredictor, cfg=None):
    """``cfg`` (or the defaults) with its model section and loss taken from the graph's metadata.

    ``eval`` and ``predict`` with ``--onnx`` read data and batch settings from the config and everything about the
    model from the graph, so a config is optional.
    """
    import dataclasses

    from attncluster.config import load_config

    cfg = cfg if cfg is not None else load_config(None, [])
    kwargs = json.loads(predictor.metadata.get("model", "{}"))
    model = dataclasses.replace(cfg.model, feature_dims=dict(predictor.modalities), num_classes=predictor.num_classes,
                                seg_num=predictor.seg_num,
                                **{k: kwargs[k] for k in ("cluster_nums", "drop_rate") if k in kwargs})
    train = dataclasses.replace(cfg.train, loss=predictor.loss, precision="fp32")
    return dataclasses.replace(cfg, model=model, train=train)
