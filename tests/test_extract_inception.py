"""extract.inception / extract.graphdef: the 2015 graph's preprocessing, layer math and the GraphDef loader.

GraphDefs are written here by hand (NodeDef / AttrValue / TensorProto bytes, the op types and node names of
``classify_image_graph_def.pb``: Const with tensor_content or float_val, Conv2D, BatchNormWithGlobalNormalization,
CheckNumerics, Relu, AvgPool / MaxPool, Concat with concat_dim first); expectations are plain numpy computations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attncluster.errors import DataError
from attncluster.extract import inception as inc
from attncluster.extract.graphdef import OtherTensor, RawAttr, encode_graphdef, encode_node, parse_graphdef

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------------------------------
# Plain numpy reference (NHWC activations, HWIO filters: the graph's own layout)


def np_conv(x: np.ndarray, w: np.ndarray, stride: int, padding: str) -> np.ndarray:
    """x (H, W, C), w (kh, kw, C, O) -> (H', W', O), TF SAME (stride 1, symmetric) / VALID."""
    kh, kw = w.shape[:2]
    if padding == "SAME":
        x = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h = (x.shape[0] - kh) // stride + 1
    wd = (x.shape[1] - kw) // stride + 1
    out = np.zeros((h, wd, w.shape[3]))
    for i in range(h):
        for j in range(wd):
            patch = x[i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[i, j] = np.tensordot(patch, w, axes=([0, 1, 2], [0, 1, 2]))
    return out


def np_bn_relu(x, moving_mean, moving_variance, beta, gamma, eps=0.001, scale=True):
    y = (x - moving_mean) / np.sqrt(moving_variance + eps)
    if scale:
        y = y * gamma
    return np.maximum(y + beta, 0.0)


def np_pool_same(x: np.ndarray, op: str) -> np.ndarray:
    """3x3 stride-1 SAME pool; TF's average excludes the padding from the count."""
    h, w, _ = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            win = x[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :]
            out[i, j] = win.max(axis=(0, 1)) if op == "max" else win.mean(axis=(0, 1))
    return out


# --------------------------------------------------------------------------------------------------------------------
# GraphDef writing helpers


def layer_nodes(name: str, src: str, w: np.ndarray, stride: int, padding: str, bn: dict, scale_after=True):
    """The nodes of one graph layer ``name`` reading ``src``, named as in classify_image_graph_def.pb."""
    nodes = [encode_node(f"{name}/conv2d_params", "Const", attr={"dtype": ("type", 1), "value": w.astype(np.float32)}),
             encode_node(f"{name}/Conv2D", "Conv2D", [src, f"{name}/conv2d_params"],
                         {"T": ("type", 1), "strides": [1, stride, stride, 1], "padding": padding.encode(),
                          "use_cudnn_on_gpu": True})]
    for part in ("beta", "gamma", "moving_mean", "moving_variance"):
        nodes.append(encode_node(f"{name}/batchnorm/{part}", "Const", attr={"value": bn[part].astype(np.float32)}))
    nodes += [encode_node(f"{name}/batchnorm", "BatchNormWithGlobalNormalization",
                          [f"{name}/Conv2D"] + [f"{name}/batchnorm/{p}" for p in ("moving_mean", "moving_variance",
                                                                                   "beta", "gamma")],
                          {"variance_epsilon": 0.001, "scale_after_normalization": scale_after, "T": ("type", 1)}),
              encode_node(f"{name}/CheckNumerics", "CheckNumerics", [f"{name}/batchnorm"], {"message": b"bn"}),
              encode_node(name, "Relu", [f"{name}/CheckNumerics"], {"T": ("type", 1)})]
    return nodes


def random_bn(c: int) -> dict:
    return {"beta": RNG.normal(0, 0.1, c), "gamma": RNG.uniform(0.5, 1.5, c), "moving_mean": RNG.normal(0, 0.2, c),
            "moving_variance": RNG.uniform(0.5, 2.0, c)}


def _field(no: int, body: bytes) -> bytes:
    """A length-delimited protobuf field (tags and lengths below 128)."""
    assert no < 16 and len(body) < 128
    return bytes([no << 3 | 2, len(body)]) + body


# A DT_STRING TensorProto (dtype 7, scalar shape, string_val b"jpeg") and a shape [-1, -1, 3] (dims as varints,
# -1 as 10 bytes): what a JPEG-input Placeholder / Const carries; the reader must pass over them.
STRING_TENSOR = RawAttr(_field(8, bytes([0x08, 7]) + _field(2, b"") + _field(8, b"jpeg")))
MINUS_ONE = bytes([0x08]) + b"\xff" * 9 + b"\x01"
PARTIAL_SHAPE = RawAttr(_field(7, _field(2, MINUS_ONE) + _field(2, MINUS_ONE) + _field(2, bytes([0x08, 3]))))


def preprocess_nodes() -> list[bytes]:
    """The graph's input chain; Sub/Mul constants written as float_val scalars (the other TensorProto encoding)."""
    return [encode_node("DecodeJpeg/contents", "Placeholder", attr={"dtype": ("type", 7), "shape": PARTIAL_SHAPE}),
            encode_node("DecodeJpeg/default", "Const", attr={"dtype": ("type", 7), "value": STRING_TENSOR}),
            encode_node("DecodeJpeg", "DecodeJpeg", ["DecodeJpeg/contents"], {"channels": 3}),
            encode_node("Cast", "Cast", ["DecodeJpeg"], {"SrcT": ("type", 4), "DstT": ("type", 1)}),
            encode_node("ExpandDims/dim", "Const", attr={"value": np.array(0, np.int32)}),
            encode_node("ExpandDims", "ExpandDims", ["Cast", "ExpandDims/dim"]),
            encode_node("ResizeBilinear/size", "Const", attr={"value": np.array([299, 299], np.int32)}),
            encode_node("ResizeBilinear", "ResizeBilinear", ["ExpandDims", "ResizeBilinear/size"]),
            encode_node("Sub/y", "Const", attr={"value": np.array(128.0, np.float32)}),
            encode_node("Sub", "Sub", ["ResizeBilinear", "Sub/y"]),
            encode_node("Mul/y", "Const", attr={"value": np.array(1 / 128, np.float32)}),
            encode_node("Mul", "Mul", ["Sub", "Mul/y"])]


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing


def test_tf1_resize_hand_computed():
    # 1 x 2 -> 1 x 4, TF1 legacy: source x = out_x * 2/4 = 0, 0.5, 1, 1.5; upper index clamps at 1.
    x = torch.tensor([[[[0.0, 10.0]]]])
    out = inc.resize_bilinear_tf1(x, size=(1, 4))
    assert out.flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    # torch's half-pixel bilinear would give [0, 2.5, 7.5, 10]: the graph's resize is not that.
    half = torch.nn.functional.interpolate(x, size=(1, 4), mode="bilinear", align_corners=False)
    assert half.flatten().tolist() != out.flatten().tolist()


def np_resize_tf1(img: np.ndarray, oh: int, ow: int, ys, xs) -> np.ndarray:
    """TensorFlow 1's ResizeBilinear (align_corners=False) written out for output pixels (ys x xs), float32."""
    ih, iw, _ = img.shape
    sy, sx = np.float32(ih) / np.float32(oh), np.float32(iw) / np.float32(ow)  # float32 division, as TF
    out = np.zeros((len(ys), len(xs), img.shape[2]), np.float32)
    for a, y in enumerate(ys):
        fy = np.float32(y) * sy
        y0, y1, ly = int(np.floor(fy)), min(int(np.ceil(fy)), ih - 1), fy - np.floor(fy)
        for b, x in enumerate(xs):
            fx = np.float32(x) * sx
            x0, x1, lx = int(np.floor(fx)), min(int(np.ceil(fx)), iw - 1), fx - np.floor(fx)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * lx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * lx
            out[a, b] = top + (bottom - top) * ly
    return out


def test_preprocess_matches_graph_chain():
    frames = RNG.integers(0, 256, (2, 7, 11, 3), dtype=np.uint8)
    x = inc.preprocess(frames)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    # Cast -> ResizeBilinear -> Sub 128 -> Mul 1/128 on a sub-grid of output pixels (the full loop is slow).
    ys, xs = range(0, 299, 13), range(0, 299, 17)
    ref = np_resize_tf1(frames[1].astype(np.float32), 299, 299, ys, xs)
    ref = (ref - np.float32(128)) * np.float32(1 / 128)
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy()[::13, ::17], ref, rtol=0, atol=1e-6)
    # Constant frames stay constant: 0 -> -1, 255 -> 127/128.
    const = inc.preprocess(np.full((1, 5, 5, 3), 255, np.uint8))
    assert torch.all(const == 127 / 128)
    with pytest.raises(DataError, match="uint8"):
        inc.preprocess(np.zeros((1, 5, 5, 3), np.float32))


# --------------------------------------------------------------------------------------------------------------------
# A small GraphDef: one mixed block (BlockA) on a 3-channel input


class OneBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mixed = inc.BlockA(3, pool_features=2, pool="avg")

    def forward(self, x):
        return self.mixed(x)


BLOCK_A = {  # layer -> (kh, kw, cin, cout)
    "mixed/conv": (1, 1, 3, 64), "mixed/tower/conv": (1, 1, 3, 48), "mixed/tower/conv_1": (5, 5, 48, 64),
    "mixed/tower_1/conv": (1, 1, 3, 64), "mixed/tower_1/conv_1": (3, 3, 64, 96),
    "mixed/tower_1/conv_2": (3, 3, 96, 96), "mixed/tower_2/conv": (1, 1, 3, 2),
}


def write_block_graph(path, scale_after_for=()):
    weights = {k: RNG.normal(0, 0.3, s) for k, s in BLOCK_A.items()}
    bns = {k: random_bn(s[3]) for k, s in BLOCK_A.items()}
    srcs = {"mixed/conv": "input", "mixed/tower/conv": "input", "mixed/tower/conv_1": "mixed/tower/conv",
            "mixed/tower_1/conv": "input", "mixed/tower_1/conv_1": "mixed/tower_1/conv",
            "mixed/tower_1/conv_2": "mixed/tower_1/conv_1", "mixed/tower_2/conv": "mixed/tower_2/pool"}
    nodes = preprocess_nodes() + [encode_node("input", "Placeholder", attr={"dtype": ("type", 1)}),
                                  encode_node("mixed/tower_2/pool", "AvgPool", ["input"],
                                              {"ksize": [1, 3, 3, 1], "strides": [1, 1, 1, 1], "padding": b"SAME"})]
    for k in BLOCK_A:
        nodes += layer_nodes(k, srcs[k], weights[k], 1, "SAME", bns[k], scale_after=k not in scale_after_for)
    nodes += [encode_node("mixed/join/concat_dim", "Const", attr={"value": np.array(3, np.int32)}),
              encode_node("mixed/join", "Concat", ["mixed/join/concat_dim", "mixed/conv", "mixed/tower/conv_1",
                                                   "mixed/tower_1/conv_2", "mixed/tower_2/conv"], {"N": 4})]
    path.write_bytes(encode_graphdef(nodes))
    return weights, bns


def test_graphdef_parser_reads_nodes_and_tensors(tmp_path):
    weights, _ = write_block_graph(tmp_path / "g.pb")
    nodes = parse_graphdef((tmp_path / "g.pb").read_bytes())
    np.testing.assert_array_equal(nodes["mixed/tower/conv_1/conv2d_params"].value,
                                  weights["mixed/tower/conv_1"].astype(np.float32))
    assert nodes["Sub/y"].value.shape == () and nodes["Sub/y"].value == 128.0
    assert nodes["DecodeJpeg/default"].attr["value"] == OtherTensor(7, ())  # a string tensor: kept, not decoded
    assert nodes["DecodeJpeg/contents"].attr["shape"] == (-1, -1, 3)
    assert nodes["ResizeBilinear/size"].value.tolist() == [299, 299]
    join = nodes["mixed/join"]
    assert join.op == "Concat" and join.inputs[0] == "mixed/join/concat_dim" and join.attr["N"] == 4
    conv = nodes["mixed/conv/Conv2D"]
    assert conv.attr["strides"] == [1, 1, 1, 1] and conv.attr["padding"] == b"SAME"
    bn = nodes["mixed/conv/batchnorm"]
    assert bn.attr["scale_after_normalization"] is True and abs(bn.attr["variance_epsilon"] - 0.001) < 1e-9


def test_graphdef_weights_load_and_block_matches_numpy(tmp_path):
    path = tmp_path / "g.pb"
    weights, bns = write_block_graph(path, scale_after_for={"mixed/tower/conv"})
    model = OneBlock()
    state = inc.load_graphdef_weights(str(path), model=model, check_layout=False)
    model.load_state_dict(state)
    for k, w in weights.items():
        key = k.replace("/", ".")
        # HWIO in the graph, OIHW in the module.
        np.testing.assert_array_equal(state[f"{key}.weight"].numpy(), w.astype(np.float32).transpose(3, 2, 0, 1))
        for part in ("beta", "moving_mean", "moving_variance"):
            np.testing.assert_array_equal(state[f"{key}.{part}"].numpy(), bns[k][part].astype(np.float32))
    # scale_after_normalization false: the graph ignores gamma, so the loaded gamma is ones.
    assert torch.all(state["mixed.tower.conv.gamma"] == 1)
    np.testing.assert_array_equal(state["mixed.conv.gamma"].numpy(), bns["mixed/conv"]["gamma"].astype(np.float32))

    x = RNG.normal(0, 1, (6, 5, 3))
    f32 = {k: w.astype(np.float32).astype(np.float64) for k, w in weights.items()}
    b32 = {k: {p: v.astype(np.float32).astype(np.float64) for p, v in b.items()} for k, b in bns.items()}

    def layer(k, inp):
        return np_bn_relu(np_conv(inp, f32[k], 1, "SAME"), **b32[k], scale=k != "mixed/tower/conv")

    ref = np.concatenate([
        layer("mixed/conv", x),
        layer("mixed/tower/conv_1", layer("mixed/tower/conv", x)),
        layer("mixed/tower_1/conv_2", layer("mixed/tower_1/conv_1", layer("mixed/tower_1/conv", x))),
        layer("mixed/tower_2/conv", np_pool_same(x, "avg")),
    ], axis=-1)
    with torch.no_grad():
        out = model(torch.from_numpy(x.transpose(2, 0, 1)[None]).float())[0].permute(1, 2, 0).numpy()
    assert out.shape == (6, 5, 64 + 64 + 96 + 2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_graphdef_wrong_files_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.pb"
    text.write_text("this is not a graph\n")
    with pytest.raises(DataError) as e:
        inc.load_graphdef_weights(str(text), model=OneBlock(), check_layout=False)
    assert "notes.pb" in str(e.value) and "GraphDef" in str(e.value) and "\n" not in str(e.value)

    with pytest.raises(DataError, match="no such|not found"):
        inc.load_graphdef_weights(str(tmp_path / "missing.pb"), model=OneBlock())

    # A real-looking graph that lacks a layer, and one whose filter has the wrong shape.
    path = tmp_path / "g.pb"
    write_block_graph(path)
    data = path.read_bytes()
    nodes = parse_graphdef(data)
    assert "mixed/tower_2/conv/conv2d_params" in nodes
    def simple(attr):  # the attributes encode_node can write back
        return {k: v for k, v in attr.items() if isinstance(v, (np.ndarray, bool, int, float, bytes))}

    partial = [encode_node(n.name, n.op, n.inputs, simple(n.attr))
               for n in nodes.values() if n.name != "mixed/tower_2/conv/conv2d_params"]
    (tmp_path / "partial.pb").write_bytes(encode_graphdef(partial))
    with pytest.raises(DataError, match="no Const node 'mixed/tower_2/conv/conv2d_params'"):
        inc.load_graphdef_weights(str(tmp_path / "partial.pb"), model=OneBlock(), check_layout=False)
    wrong = [encode_node(n.name, n.op, n.inputs, {"value": np.zeros((3, 3, 3, 64), np.float32)})
             if n.name == "mixed/conv/conv2d_params" else encode_node(n.name, n.op, n.inputs) for n in nodes.values()]
    (tmp_path / "wrong.pb").write_bytes(encode_graphdef(wrong))
    with pytest.raises(DataError, match=r"mixed/conv/conv2d_params is float32 \[3, 3, 3, 64\], expected float32 "
                                        r"\[1, 1, 3, 64\]"):
        inc.load_graphdef_weights(str(tmp_path / "wrong.pb"), model=OneBlock(), check_layout=False)


# --------------------------------------------------------------------------------------------------------------------
# The whole network: a graph written from a random InceptionV3 loads back exactly; layout checks catch differences


_POOLS = {"avg": "AvgPool", "max": "MaxPool"}


def inception_graph(model: inc.InceptionV3, *, join_swap: str | None = None, pool_op: dict | None = None) -> bytes:
    """A GraphDef of ``model``'s weights with the 2015 graph's node names, pools and concat order."""
    nodes = preprocess_nodes()

    def add_layer(name: str, src: str) -> str:
        m = inc.getattr_path(model, name)
        w = m.weight.detach().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
        bn = {p: getattr(m, p).detach().numpy() for p in ("beta", "gamma", "moving_mean", "moving_variance")}
        nodes.extend(layer_nodes(name, src, w, m.stride, m.padding, bn))
        return name

    def add_pool(name: str, src: str, op: str, k: int, s: int, pad: str) -> str:
        nodes.append(encode_node(name, op, [src], {"ksize": [1, k, k, 1], "strides": [1, s, s, 1],
                                                   "padding": pad.encode()}))
        return name

    def add_concat(name: str, inputs: list[str]) -> str:
        if name == join_swap:
            inputs = [inputs[1], inputs[0]] + inputs[2:]
        nodes.append(encode_node(f"{name}/concat_dim", "Const", attr={"value": np.array(3, np.int32)}))
        nodes.append(encode_node(name, "Concat", [f"{name}/concat_dim"] + inputs, {"N": len(inputs)}))
        return name

    def tower(prefix: str, src: str, names: list[str]) -> str:
        for n in names:
            src = add_layer(f"{prefix}/{n}", src)
        return src

    x = "Mul"
    for n in ("conv", "conv_1", "conv_2"):
        x = add_layer(n, x)
    x = add_pool("pool", x, "MaxPool", 3, 2, "VALID")
    x = add_layer("conv_4", add_layer("conv_3", x))
    x = add_pool("pool_1", x, "MaxPool", 3, 2, "VALID")
    for i in range(11):
        p = "mixed" if i == 0 else f"mixed_{i}"
        block = getattr(model, p)
        pool = (pool_op or {}).get(p) or _POOLS.get(getattr(getattr(block, "tower_2", None), "pool", None))
        if isinstance(block, inc.BlockA):
            outs = [add_layer(f"{p}/conv", x), tower(f"{p}/tower", x, ["conv", "conv_1"]),
                    tower(f"{p}/tower_1", x, ["conv", "conv_1", "conv_2"]),
                    add_layer(f"{p}/tower_2/conv", add_pool(f"{p}/tower_2/pool", x, pool, 3, 1, "SAME"))]
        elif isinstance(block, inc.BlockB):
            outs = [add_layer(f"{p}/conv", x), tower(f"{p}/tower", x, ["conv", "conv_1", "conv_2"]),
                    add_pool(f"{p}/pool", x, "MaxPool", 3, 2, "VALID")]
        elif isinstance(block, inc.BlockC):
            outs = [add_layer(f"{p}/conv", x), tower(f"{p}/tower", x, ["conv", "conv_1", "conv_2"]),
                    tower(f"{p}/tower_1", x, ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]),
                    add_layer(f"{p}/tower_2/conv", add_pool(f"{p}/tower_2/pool", x, pool, 3, 1, "SAME"))]
        elif isinstance(block, inc.BlockD):
            outs = [tower(f"{p}/tower", x, ["conv", "conv_1"]),
                    tower(f"{p}/tower_1", x, ["conv", "conv_1", "conv_2", "conv_3"]),
                    add_pool(f"{p}/pool", x, "MaxPool", 3, 2, "VALID")]
        else:
            t = add_layer(f"{p}/tower/conv", x)
            t = add_concat(f"{p}/tower/mixed", [add_layer(f"{p}/tower/mixed/conv", t),
                                                add_layer(f"{p}/tower/mixed/conv_1", t)])
            t1 = tower(f"{p}/tower_1", x, ["conv", "conv_1"])
            t1 = add_concat(f"{p}/tower_1/mixed", [add_layer(f"{p}/tower_1/mixed/conv", t1),
                                                   add_layer(f"{p}/tower_1/mixed/conv_1", t1)])
            outs = [add_layer(f"{p}/conv", x), t, t1,
                    add_layer(f"{p}/tower_2/conv", add_pool(f"{p}/tower_2/pool", x, pool, 3, 1, "SAME"))]
        x = add_concat(f"{p}/join", outs)
    x = add_pool("pool_3", x, "AvgPool", 8, 1, "VALID")
    nodes.append(encode_node("pool_3/_reshape/shape", "Const", attr={"value": np.array([1, 2048], np.int32)}))
    nodes.append(encode_node("pool_3/_reshape", "Reshape", [x, "pool_3/_reshape/shape"]))
    return encode_graphdef(nodes)


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    model = inc.InceptionV3(generator=torch.Generator().manual_seed(5)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a swapped tensor would show
        for m in model.modules():
            if isinstance(m, inc.ConvBN):
                m.moving_mean.uniform_(-0.1, 0.1)
                m.moving_variance.uniform_(0.5, 2.0)
                m.beta.uniform_(-0.1, 0.1)
                m.gamma.uniform_(0.8, 1.2)
    return model


def test_full_graph_loads_exactly(tmp_path, random_inception):
    path = tmp_path / "classify_image_graph_def.pb"
    path.write_bytes(inception_graph(random_inception))
    loaded = inc.InceptionV3.from_graphdef(str(path))
    ours, ref = loaded.state_dict(), random_inception.state_dict()
    assert ours.keys() == ref.keys() and len(inc.conv_layers(loaded)) == 94
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k
    assert sum(p.numel() for p in loaded.parameters()) == 21_785_568
    # The concat order and pool types were checked; the last block's pool is a max pool (the 2015 graph's quirk).
    assert loaded.mixed_10.tower_2.pool == "max" and loaded.mixed_9.tower_2.pool == "avg"


def test_full_graph_layout_differences_are_caught(tmp_path, random_inception):
    path = tmp_path / "swapped.pb"
    path.write_bytes(inception_graph(random_inception, join_swap="mixed_4/join"))
    with pytest.raises(DataError, match="mixed_4/join concatenates"):
        inc.load_graphdef_weights(str(path))
    path.write_bytes(inception_graph(random_inception, pool_op={"mixed_10": "AvgPool"}))
    with pytest.raises(DataError, match="mixed_10/tower_2 pools with AvgPool, this module expects MaxPool"):
        inc.load_graphdef_weights(str(path))


# --------------------------------------------------------------------------------------------------------------------
# torchvision weights


def test_torchvision_names_and_loader(tmp_path, random_inception):
    # Spot checks against torchvision's Inception3 module names.
    assert inc.torchvision_name("conv") == "Conv2d_1a_3x3"
    assert inc.torchvision_name("conv_4") == "Conv2d_4a_3x3"
    assert inc.torchvision_name("mixed/tower/conv_1") == "Mixed_5b.branch5x5_2"
    assert inc.torchvision_name("mixed_4/tower_1/conv_2") == "Mixed_6b.branch7x7dbl_3"
    assert inc.torchvision_name("mixed_8/tower_1/conv_3") == "Mixed_7a.branch7x7x3_4"
    assert inc.torchvision_name("mixed_10/tower_1/mixed/conv_1") == "Mixed_7c.branch3x3dbl_3b"
    state = {}
    for layer, m in inc.conv_layers(random_inception).items():  # the same shapes as variant="torchvision"
        tv = inc.torchvision_name(layer)
        state[f"{tv}.conv.weight"] = m.weight.detach().clone()
        state[f"{tv}.bn.weight"] = torch.rand(m.beta.shape)
        state[f"{tv}.bn.bias"] = torch.rand(m.beta.shape)
        state[f"{tv}.bn.running_mean"] = torch.rand(m.beta.shape)
        state[f"{tv}.bn.running_var"] = torch.rand(m.beta.shape) + 0.5
        state[f"{tv}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "inception_v3_google.pth")
    with pytest.warns(UserWarning, match="only approximate"):
        loaded = inc.load_torchvision_inception(str(tmp_path / "inception_v3_google.pth"))
    assert torch.equal(loaded["mixed_4.tower_1.conv_2.gamma"], state["Mixed_6b.branch7x7dbl_3.bn.weight"])
    assert torch.equal(loaded["mixed_4.tower_1.conv_2.weight"], state["Mixed_6b.branch7x7dbl_3.conv.weight"])
    model = inc.InceptionV3(variant="torchvision", empty=True)
    model.load_state_dict(loaded, assign=True)
    assert model.mixed_10.tower_2.pool == "avg_pad" and model.mixed.tower_2.pool == "avg_pad"

    del state["Mixed_7c.branch_pool.bn.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="Mixed_7c.branch_pool.bn.running_var"):
        inc.load_torchvision_inception(str(tmp_path / "partial.pth"))
    (tmp_path / "junk.pth").write_bytes(b"\x00junk" * 10)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="not a torch state dict") as e:
        inc.load_torchvision_inception(str(tmp_path / "junk.pth"))
    assert "\n" not in str(e.value)
