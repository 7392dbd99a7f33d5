"""Inception-v3 exactly as the 2015-12-05 TensorFlow graph that made the YouTube-8M rgb features.

The dataset's frame features are the ``pool_3/_reshape:0`` activations (2048-d) of ``classify_image_graph_def.pb``
from ``inception-2015-12-05.tgz``, fed raw RGB frames at ``DecodeJpeg:0`` (google/youtube-8m
``feature_extractor/feature_extractor.py``; MediaPipe's ``feature_extraction.pbtxt`` feeds the same tensor). Inside the
graph the frame goes ``Cast`` (float32) -> ``ExpandDims`` -> ``ResizeBilinear`` to 299 x 299 (TF1 kernel,
``align_corners`` false: source index = output index * in/out, no half-pixel offset) -> ``Sub`` 128 -> ``Mul``
1/128 -> the network. :func:`preprocess` reproduces that chain.

The graph's layers differ from torchvision's Inception-v3 (a later model ported from the 2016 TF-slim checkpoint):

- every layer is ``X/conv2d_params`` (HWIO, no bias) -> ``BatchNormWithGlobalNormalization`` (``X/batchnorm/{beta,
  gamma, moving_mean, moving_variance}``, epsilon 0.001; gamma used only when the node's
  ``scale_after_normalization`` is set) -> Relu;
- the average pools of the mixed blocks are TF ``SAME`` pools: padding is excluded from the mean
  (``count_include_pad=False``; torchvision includes it);
- the last block (``mixed_10``) pools its fourth tower with a **max** pool, not an average pool.

Modules are named after the graph (``mixed_4.tower_1.conv_2`` is ``mixed_4/tower_1/conv_2``), so
:func:`load_graphdef_weights` maps Const nodes to parameters by name, with shape checks, and checks the ops around
them (strides, padding, pool types, concat order, epsilon, preprocessing constants) against this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attncluster.errors import DataError
from attncluster.extract.random_init import random_fill

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = 0.001
GRAPH_SUB = 128.0  # the graph's Sub/y
GRAPH_MUL = 1.0 / 128.0  # the graph's Mul/y (0.0078125, exact in float32)
VARIANTS = ("graph2015", "torchvision")
_PASS_THROUGH = {"Relu", "CheckNumerics", "Identity"}


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing


def _tf1_resize_axis(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """TF1 ``ResizeBilinear`` (align_corners false) source indices and weights along one axis.

    ``in = out_index * (in_size / out_size)`` in float32; lower = floor(in), upper = min(ceil(in), in_size - 1),
    lerp = in - floor(in): ``compute_interpolation_weights`` in TensorFlow's ``resize_bilinear_op.cc``.
    """
    # float32 division, as TF's CalculateResizeScale (not a double quotient rounded to float32).
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    pos = torch.arange(out_size, dtype=torch.float32) * scale
    lower = pos.floor()
    upper = torch.minimum(pos.ceil(), torch.tensor(in_size - 1, dtype=torch.float32))
    lerp = pos - lower
    return lower.long().to(device), upper.long().to(device), lerp.to(device)


def resize_bilinear_tf1(x: Tensor, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> Tensor:
    """(N, C, H, W) uint8 or float32 -> (N, C, size) float32, resized like TF1's ``ResizeBilinear`` with
    ``align_corners=False``.

    The arithmetic order is the kernel's: ``top = tl + (tr - tl) * xl; bottom = bl + (br - bl) * xl;
    out = top + (bottom - top) * yl``, in float32. uint8 input is gathered first and cast after (the same values as
    casting first, as the graph does, without a float copy of a full-resolution frame batch).
    """
    n, c, h, w = x.shape
    y0, y1, yl = _tf1_resize_axis(h, size[0], x.device)
    x0, x1, xl = _tf1_resize_axis(w, size[1], x.device)
    top_rows, bottom_rows = x[:, :, y0, :], x[:, :, y1, :]  # (N, C, out_h, W)
    tl, tr = top_rows[..., x0].float(), top_rows[..., x1].float()  # (N, C, out_h, out_w)
    bl, br = bottom_rows[..., x0].float(), bottom_rows[..., x1].float()
    top = tl + (tr - tl) * xl
    bottom = bl + (br - bl) * xl
    return top + (bottom - top) * yl[:, None]


def preprocess(frames: np.ndarray | Tensor, variant: str = "graph2015",
               device: torch.device | str = "cpu") -> Tensor:
    """RGB frames -> the network input, as the 2015 graph does from ``DecodeJpeg:0``.

    Args:
        frames: uint8 (N, H, W, 3) RGB (any H, W; all frames of one call share it).
        variant: ``"graph2015"`` (the dataset's graph: TF1 bilinear resize to 299 x 299, ``(x - 128) / 128``) or
            ``"torchvision"`` (torchvision's Inception-v3 weights: antialiased bilinear resize of the whole frame to
            299 x 299, ``x / 127.5 - 1``, what its ``transform_input`` makes of ImageNet-normalised input; there is no
            centre crop, like the YouTube-8M extractor).
        device: where to compute (the resize runs there too).

    Returns:
        float32 (N, 3, 299, 299).
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"frames must be uint8 (N, H, W, 3) RGB, got {x.dtype} {tuple(x.shape)}")
    x = x.to(device).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
    if variant == "graph2015":
        x = resize_bilinear_tf1(x)  # the graph's Cast to float32, then ResizeBilinear
        return (x - GRAPH_SUB) * GRAPH_MUL
    if variant == "torchvision":
        x = F.interpolate(x.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                          antialias=True)
        return x / 127.5 - 1.0
    raise ValueError(f"unknown Inception variant {variant!r}, expected one of {VARIANTS}")


# --------------------------------------------------------------------------------------------------------------------
# Layers


def _pair(k: int | tuple[int, int]) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else k


class ConvBN(nn.Module):
    """One graph layer: ``Conv2D`` (no bias) -> ``BatchNormWithGlobalNormalization`` -> ``Relu``.

    Args:
        cin, cout: channels.
        kernel: (kh, kw) or k.
        stride: 1 or 2.
        padding: ``"SAME"`` (stride 1 only, odd kernels: symmetric, k // 2) or ``"VALID"``.
    """

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: str = "SAME") -> None:
        super().__init__()
        kh, kw = _pair(kernel)
        if padding == "SAME" and stride != 1:
            raise ValueError("SAME padding is only used with stride 1 in this graph")
        self.stride = stride
        self.padding = padding
        self.pad = (kh // 2, kw // 2) if padding == "SAME" else (0, 0)
        self.eps = BN_EPSILON
        self.weight = nn.Parameter(torch.empty(cout, cin, kh, kw))  # the graph's HWIO conv2d_params, as OIHW
        self.beta = nn.Parameter(torch.zeros(cout))
        self.gamma = nn.Parameter(torch.ones(cout))
        self.register_buffer("moving_mean", torch.zeros(cout))
        self.register_buffer("moving_variance", torch.ones(cout))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He-variance (uniform) conv weights, identity batch norm: activations keep their scale through the 94 layers."""
        if self.weight.is_meta:  # an empty module waiting for load_state_dict(assign=True)
            return
        random_fill([(self.weight, self.he_std)], generator)
        self.reset_batch_norm()

    @property
    def he_std(self) -> float:
        return (2.0 / self.weight[0].numel()) ** 0.5

    def reset_batch_norm(self) -> None:
        with torch.no_grad():
            self.beta.zero_()
            self.gamma.fill_(1.0)
            self.moving_mean.zero_()
            self.moving_variance.fill_(1.0)

    folded: tuple[Tensor, Tensor] | None = None  # set by fold_batch_norm(): (weight, bias) for inference

    def fold_batch_norm(self) -> None:
        """Fold the (frozen) batch norm into the convolution for inference: one conv with a bias instead of a conv
        and three passes over its output (the same math, rounded in another order: |diff| ~1e-6 relative).

        The fold is a snapshot of the current parameters, not part of the state dict; ``load_state_dict`` after it
        needs another call.
        """
        with torch.no_grad():
            scale = self.gamma * torch.rsqrt(self.moving_variance + self.eps)  # (cout,)
            # channels-last (1.6x faster convolutions on this CPU; same math), written in one pass
            weight = torch.empty_like(self.weight, memory_format=torch.channels_last)
            torch.mul(self.weight, scale[:, None, None, None], out=weight)
            self.folded = (weight, self.beta - self.moving_mean * scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.folded is not None:
            return F.relu(F.conv2d(x, *self.folded, stride=self.stride, padding=self.pad), inplace=True)
        x = F.conv2d(x, self.weight, stride=self.stride, padding=self.pad)  # (N, cin, H, W) -> (N, cout, H', W')
        scale = self.gamma * torch.rsqrt(self.moving_variance + self.eps)
        return F.relu((x - self.moving_mean[:, None, None]) * scale[:, None, None] + self.beta[:, None, None])


def _conv_names(n: int) -> list[str]:
    return ["conv"] + [f"conv_{i}" for i in range(1, n)]


class Tower(nn.Module):
    """Layers ``conv``, ``conv_1``, ... applied in order (a graph ``tower``), optionally after a 3x3 pool."""

    def __init__(self, *layers: nn.Module, pool: str | None = None, last: str | None = None) -> None:
        super().__init__()
        self.pool = pool  # None, "avg" (TF SAME: padding not counted), "avg_pad" (torchvision), "max"
        names = _conv_names(len(layers))
        if last is not None:  # the E blocks end in a sub-block named "mixed"
            names[-1] = last
        for name, layer in zip(names, layers):
            self.add_module(name, layer)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool == "avg":
            x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        elif self.pool == "avg_pad":
            x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
        elif self.pool == "max":
            x = F.max_pool2d(x, 3, stride=1, padding=1)
        for layer in self.children():
            x = layer(x)
        return x


class Split(nn.Module):
    """The E blocks' ``mixed`` sub-block: ``conv`` (1x3) and ``conv_1`` (3x1) side by side, concatenated."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = ConvBN(c, c, (1, 3))
        self.conv_1 = ConvBN(c, c, (3, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.conv_1(x)], dim=1)  # (N, 2c, H, W)


class BlockA(nn.Module):
    """``mixed``, ``mixed_1``, ``mixed_2`` (35 x 35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1."""

    order = ("conv", "tower/conv_1", "tower_1/conv_2", "tower_2/conv")

    def __init__(self, cin: int, pool_features: int, pool: str) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = Tower(ConvBN(cin, 48, 1), ConvBN(48, 64, 5))
        self.tower_1 = Tower(ConvBN(cin, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3))
        self.tower_2 = Tower(ConvBN(cin, pool_features, 1), pool=pool)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], dim=1)


class BlockB(nn.Module):
    """``mixed_3`` (35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2."""

    order = ("conv", "tower/conv_2", "MaxPool")

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2, padding="VALID")
        self.tower = Tower(ConvBN(cin, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3, stride=2, padding="VALID"))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, stride=2)], dim=1)


class BlockC(nn.Module):
    """``mixed_4`` .. ``mixed_7`` (17 x 17): 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | pool-1x1."""

    order = ("conv", "tower/conv_2", "tower_1/conv_4", "tower_2/conv")

    def __init__(self, cin: int, c7: int, pool: str) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 192, 1)
        self.tower = Tower(ConvBN(cin, c7, 1), ConvBN(c7, c7, (1, 7)), ConvBN(c7, 192, (7, 1)))
        self.tower_1 = Tower(ConvBN(cin, c7, 1), ConvBN(c7, c7, (7, 1)), ConvBN(c7, c7, (1, 7)),
                             ConvBN(c7, c7, (7, 1)), ConvBN(c7, 192, (1, 7)))
        self.tower_2 = Tower(ConvBN(cin, 192, 1), pool=pool)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], dim=1)


class BlockD(nn.Module):
    """``mixed_8`` (17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2."""

    order = ("tower/conv_1", "tower_1/conv_3", "MaxPool")

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.tower = Tower(ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2, padding="VALID"))
        self.tower_1 = Tower(ConvBN(cin, 192, 1), ConvBN(192, 192, (1, 7)), ConvBN(192, 192, (7, 1)),
                             ConvBN(192, 192, 3, stride=2, padding="VALID"))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, stride=2)], dim=1)


class BlockE(nn.Module):
    """``mixed_9``, ``mixed_10`` (8 x 8): 1x1 | 1x1-(1x3|3x1) | 1x1-3x3-(1x3|3x1) | pool-1x1."""

    order = ("conv", ("tower/mixed/conv", "tower/mixed/conv_1"), ("tower_1/mixed/conv", "tower_1/mixed/conv_1"),
             "tower_2/conv")

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 320, 1)
        self.tower = Tower(ConvBN(cin, 384, 1), Split(384), last="mixed")
        self.tower_1 = Tower(ConvBN(cin, 448, 1), ConvBN(448, 384, 3), Split(384), last="mixed")
        self.tower_2 = Tower(ConvBN(cin, 192, 1), pool=pool)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], dim=1)


class InceptionV3(nn.Module):
    """Inception-v3 up to ``pool_3``: (N, 3, 299, 299) preprocessed -> (N, 2048).

    Args:
        variant: ``"graph2015"`` (the YouTube-8M graph: TF ``SAME`` average pools that do not count padding, a max
            pool in ``mixed_10``) or ``"torchvision"`` (torchvision's pools: padding counted, average pool in the
            last block), for :func:`load_torchvision_inception` weights.

        generator: seeds the initial (random) parameters.
        empty: parameters on the meta device (no memory, no init), for ``load_state_dict(state, assign=True)``.

    Parameters start at zero-mean He-variance (uniform) / identity batch norm (:meth:`reset_parameters`): load weights with
    ``load_state_dict(load_graphdef_weights(path))`` or :meth:`from_graphdef`.
    """

    def __init__(self, variant: str = "graph2015", generator: torch.Generator | None = None,
                 empty: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown Inception variant {variant!r}, expected one of {VARIANTS}")
        self.variant = variant
        with torch.device("meta") if empty else nullcontext():
            self._build(variant)
        self.reset_parameters(generator)

    def _build(self, variant: str) -> None:
        avg = "avg" if variant == "graph2015" else "avg_pad"
        last = "max" if variant == "graph2015" else "avg_pad"
        self.conv = ConvBN(3, 32, 3, stride=2, padding="VALID")
        self.conv_1 = ConvBN(32, 32, 3, padding="VALID")
        self.conv_2 = ConvBN(32, 64, 3)
        self.conv_3 = ConvBN(64, 80, 1, padding="VALID")
        self.conv_4 = ConvBN(80, 192, 3, padding="VALID")
        self.mixed = BlockA(192, 32, avg)
        self.mixed_1 = BlockA(256, 64, avg)
        self.mixed_2 = BlockA(288, 64, avg)
        self.mixed_3 = BlockB(288)
        self.mixed_4 = BlockC(768, 128, avg)
        self.mixed_5 = BlockC(768, 160, avg)
        self.mixed_6 = BlockC(768, 160, avg)
        self.mixed_7 = BlockC(768, 192, avg)
        self.mixed_8 = BlockD(768)
        self.mixed_9 = BlockE(1280, avg)
        self.mixed_10 = BlockE(2048, last)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        layers = [m for m in self.modules() if isinstance(m, ConvBN)]
        if not layers or layers[0].weight.is_meta:  # empty: waiting for load_state_dict(assign=True)
            return
        random_fill([(m.weight, m.he_std) for m in layers], generator)  # all 94 layers at once, on every core
        for m in layers:
            m.reset_batch_norm()

    def fold_batch_norm(self) -> InceptionV3:
        """Fold every layer's batch norm into its convolution (inference only; see ConvBN.fold_batch_norm)."""
        for m in self.modules():
            if isinstance(m, ConvBN):
                m.fold_batch_norm()
        return self

    @classmethod
    def from_graphdef(cls, path: str) -> InceptionV3:
        """The module with the weights of ``classify_image_graph_def.pb`` (see :func:`load_graphdef_weights`)."""
        model = cls(empty=True)
        model.load_state_dict(load_graphdef_weights(path, model=model), assign=True)
        return model.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)  # (N, 3, 299, 299) -> (N, 32, 149, 149)
        x = self.conv_1(x)  # -> (N, 32, 147, 147)
        x = self.conv_2(x)  # -> (N, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # pool: -> (N, 64, 73, 73)
        x = self.conv_3(x)  # -> (N, 80, 73, 73)
        x = self.conv_4(x)  # -> (N, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # pool_1: -> (N, 192, 35, 35)
        x = self.mixed(x)  # -> (N, 256, 35, 35)
        x = self.mixed_1(x)  # -> (N, 288, 35, 35)
        x = self.mixed_2(x)  # -> (N, 288, 35, 35)
        x = self.mixed_3(x)  # -> (N, 768, 17, 17)
        x = self.mixed_7(self.mixed_6(self.mixed_5(self.mixed_4(x))))  # -> (N, 768, 17, 17)
        x = self.mixed_8(x)  # -> (N, 1280, 8, 8)
        x = self.mixed_10(self.mixed_9(x))  # -> (N, 2048, 8, 8)
        # pool_3: AvgPool 8x8 VALID (a global mean at 299 input); any input size >= 75 works, globally pooled.
        return x.mean(dim=(2, 3))  # -> (N, 2048): pool_3/_reshape


def conv_layers(model: nn.Module) -> dict[str, ConvBN]:
    """Graph layer name (``mixed_4/tower_1/conv_2``) -> its :class:`ConvBN`, in module order."""
    return {name.replace(".", "/"): m for name, m in model.named_modules() if isinstance(m, ConvBN)}


# --------------------------------------------------------------------------------------------------------------------
# Loading the 2015 GraphDef


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _source(nodes: Mapping, name: str) -> str:
    """Follow ``name`` back through Relu / CheckNumerics / Identity to the node that computes it."""
    seen = 0
    name = name.split(":")[0]
    while name in nodes and nodes[name].op in _PASS_THROUGH and nodes[name].inputs and seen < 16:
        name = nodes[name].inputs[0].split(":")[0]
        seen += 1
    return name


def _branch_signature(nodes: Mapping, name: str) -> object:
    """What produces a concat input: ``"conv:<layer>"``, the pool op name, or a tuple of a nested concat's inputs."""
    src = _source(nodes, name)
    node = nodes.get(src)
    if node is None:
        return f"missing:{src}"
    if node.op == "BatchNormWithGlobalNormalization":
        conv = nodes.get(_source(nodes, node.inputs[0]))
        if conv is not None and conv.op == "Conv2D" and len(conv.inputs) > 1:
            return "conv:" + conv.inputs[1].split(":")[0].removesuffix("/conv2d_params")
    if node.op in ("Concat", "ConcatV2"):
        return tuple(_branch_signature(nodes, i) for i in _concat_values(node))
    return node.op


def _concat_values(node) -> list[str]:
    values = [i for i in node.inputs if not i.startswith("^")]
    return values[1:] if node.op == "Concat" else values[:-1]  # Concat: concat_dim first; ConcatV2: axis last


def _expected(prefix: str, order) -> object:
    return tuple(_expected(prefix, o) if isinstance(o, tuple) else
                 (o if o in ("MaxPool", "AvgPool") else f"conv:{prefix}/{o}") for o in order)


def _check_list_attr(node, key: str, want: list[int], what: str) -> None:
    got = node.attr.get(key)
    if got is not None and list(got) != want:
        raise DataError(f"{what}: {key} {list(got)}, this module expects {want}")


def _check_layout(nodes: Mapping, model: InceptionV3, path: str) -> None:
    """The ops around the weights match the module: preprocessing, conv strides/padding, pools, concat order."""
    by_op: dict[str, list] = {}
    for node in nodes.values():
        by_op.setdefault(node.op, []).append(node)
    resize = by_op.get("ResizeBilinear", [])
    if len(resize) != 1:
        raise DataError(f"{path}: expected one ResizeBilinear node (the classify_image graph's input resize), "
                        f"found {len(resize)}")
    size = nodes.get(resize[0].inputs[1].split(":")[0]) if len(resize[0].inputs) > 1 else None
    size = size.attr.get("value") if size is not None and size.op == "Const" else None
    if not isinstance(size, np.ndarray) or [int(v) for v in np.ravel(size)] != [INPUT_SIZE, INPUT_SIZE]:
        raise DataError(f"{path}: ResizeBilinear size is not a Const [299, 299]")
    if resize[0].attr.get("align_corners", False) or resize[0].attr.get("half_pixel_centers", False):
        raise DataError(f"{path}: ResizeBilinear uses align_corners/half_pixel_centers; the 2015 graph uses neither")
    # The chain after the resize: Sub(resized, 128) -> Mul(., 1/128).
    previous = resize[0].name
    for op, want in (("Sub", GRAPH_SUB), ("Mul", GRAPH_MUL)):
        found = [n for n in by_op.get(op, []) if len(n.inputs) == 2 and _source(nodes, n.inputs[0]) == previous]
        const = nodes.get(found[0].inputs[1].split(":")[0]) if len(found) == 1 else None
        value = const.attr.get("value") if const is not None and const.op == "Const" else None
        if not isinstance(value, np.ndarray) or value.size != 1 or \
                not np.isclose(float(value.ravel()[0]), want, rtol=1e-7, atol=0):
            raise DataError(f"{path}: expected {previous} to be followed by {op} with the Const {want:g} (the graph's "
                            f"input normalisation)")
        previous = found[0].name
    conv_of_layer = {}
    for conv in by_op.get("Conv2D", []):
        layer = conv.inputs[1].split(":")[0].removesuffix("/conv2d_params") if len(conv.inputs) > 1 else ""
        conv_of_layer[layer] = conv
        m = getattr_path(model, layer)
        if m is None:
            continue
        what = f"{path}: {conv.name}"
        _check_list_attr(conv, "strides", [1, m.stride, m.stride, 1], what)
        pad = conv.attr.get("padding")
        one_by_one = tuple(m.weight.shape[2:]) == (1, 1)  # SAME and VALID are the same for a 1x1 stride-1 conv
        if pad is not None and pad.decode() != m.padding and not one_by_one:
            raise DataError(f"{what}: padding {pad.decode()}, this module expects {m.padding}")
        fmt = conv.attr.get("data_format")
        if fmt is not None and fmt.decode() != "NHWC":
            raise DataError(f"{what}: data_format {fmt.decode()}, expected NHWC")
    blocks = [(f"mixed{'' if i == 0 else f'_{i}'}", getattr(model, f"mixed{'' if i == 0 else f'_{i}'}"))
              for i in range(11)]
    unchecked = []
    for prefix, block in blocks:
        join = nodes.get(f"{prefix}/join")
        if join is None or join.op not in ("Concat", "ConcatV2"):
            unchecked.append(prefix)
            continue
        got = _branch_signature(nodes, join.name)
        want = _expected(prefix, block.order)
        if got != want:
            raise DataError(f"{path}: {prefix}/join concatenates {list(got)}, this module expects {list(want)}")
        for name, tower in block.named_children():
            if isinstance(tower, Tower) and tower.pool is not None:
                first = conv_of_layer.get(f"{prefix}/{name}/conv")
                src = nodes.get(_source(nodes, first.inputs[0])) if first is not None else None
                want_op = "MaxPool" if tower.pool == "max" else "AvgPool"
                if src is not None and src.op != want_op:
                    raise DataError(f"{path}: {prefix}/{name} pools with {src.op}, this module expects {want_op}")
    if unchecked:
        warnings.warn(f"{path}: no Concat node named <block>/join for {', '.join(unchecked)}: their branch order "
                      f"was not checked against the module", stacklevel=3)


def getattr_path(model: nn.Module, layer: str) -> ConvBN | None:
    m: nn.Module | None = model
    for part in layer.split("/"):
        m = m._modules.get(part) if m is not None else None
    return m if isinstance(m, ConvBN) else None


def load_graphdef_weights(path: str, model: nn.Module | None = None, check_layout: bool = True) -> dict[str, Tensor]:
    """Weights of ``classify_image_graph_def.pb`` (2015-12-05 Inception) as a state dict for :class:`InceptionV3`.

    Each layer ``X`` of the module takes the Const nodes ``X/conv2d_params`` (HWIO, transposed to OIHW) and
    ``X/batchnorm/{beta, gamma, moving_mean, moving_variance}``. Shapes are checked; the batch norm node's
    ``variance_epsilon`` must be 0.001 and, when its ``scale_after_normalization`` is false, gamma is returned as
    ones (the graph ignores it). With ``check_layout`` the ops around the weights are checked too (input resize and
    normalisation constants, conv strides and padding, pool types, concat order of every block).

    Args:
        path: the ``.pb`` file (local path or fsspec URL).
        model: the module to load into (default: a new ``InceptionV3()``; tests pass smaller ones).
        check_layout: check the graph's ops against :class:`InceptionV3` (only for an ``InceptionV3`` model).

    Raises:
        DataError: one line naming the file and the node: not a GraphDef, a missing node, a wrong shape, a layout
            that differs from this module.
    """
    from attncluster.extract.graphdef import read_graphdef

    model = InceptionV3(empty=True) if model is None else model  # only its shapes and attributes are used
    nodes = read_graphdef(path)
    consts = {n.name: n for n in nodes.values() if n.op == "Const"}
    bn_nodes = {}
    for node in nodes.values():
        if node.op == "BatchNormWithGlobalNormalization" and len(node.inputs) == 5:
            bn_nodes[node.inputs[1].split(":")[0].removesuffix("/moving_mean")] = node
    state: dict[str, Tensor] = {}
    for layer, m in conv_layers(model).items():
        key = layer.replace("/", ".")

        def const(name: str, shape: tuple[int, ...]) -> np.ndarray:
            node = consts.get(name)
            if node is None:
                raise DataError(f"{path}: no Const node {name!r}; is this classify_image_graph_def.pb from "
                                f"inception-2015-12-05.tgz?")
            try:
                value = node.value
            except Exception as e:  # noqa: BLE001 - a malformed tensor: one line
                raise DataError(f"{path}: {name}: {_one_line(e)}") from None
            if value.shape != shape or value.dtype != np.float32:
                raise DataError(f"{path}: {name} is {value.dtype} {list(value.shape)}, expected float32 {list(shape)}")
            return value

        o, i, kh, kw = m.weight.shape
        w = const(f"{layer}/conv2d_params", (kh, kw, i, o))
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        for part in ("beta", "gamma", "moving_mean", "moving_variance"):
            state[f"{key}.{part}"] = torch.from_numpy(const(f"{layer}/batchnorm/{part}", (o,)).copy())
        bn = bn_nodes.get(f"{layer}/batchnorm")
        if bn is not None:
            eps = bn.attr.get("variance_epsilon")
            if eps is not None and not np.isclose(eps, m.eps, rtol=1e-6, atol=0):
                raise DataError(f"{path}: {bn.name} has variance_epsilon {eps:g}, this module uses {m.eps:g}")
            if not bn.attr.get("scale_after_normalization", False):
                state[f"{key}.gamma"] = torch.ones(o)
        elif check_layout:
            raise DataError(f"{path}: no BatchNormWithGlobalNormalization node reads {layer}/batchnorm/moving_mean")
    if check_layout and isinstance(model, InceptionV3):
        _check_layout(nodes, model, path)
    return state


# --------------------------------------------------------------------------------------------------------------------
# torchvision weights (an approximation)

# Graph block -> torchvision block, and graph layer (within a block) -> torchvision layer.
_TV_BLOCKS = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
              "conv_4": "Conv2d_4a_3x3", "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
              "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d",
              "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_TV_A = {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2",
         "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2", "tower_1/conv_2": "branch3x3dbl_3",
         "tower_2/conv": "branch_pool"}
_TV_B = {"conv": "branch3x3", "tower/conv": "branch3x3dbl_1", "tower/conv_1": "branch3x3dbl_2",
         "tower/conv_2": "branch3x3dbl_3"}
_TV_C = {"conv": "branch1x1", "tower/conv": "branch7x7_1", "tower/conv_1": "branch7x7_2", "tower/conv_2": "branch7x7_3",
         **{f"tower_1/{c}": f"branch7x7dbl_{j + 1}" for j, c in enumerate(_conv_names(5))},
         "tower_2/conv": "branch_pool"}
_TV_D = {"tower/conv": "branch3x3_1", "tower/conv_1": "branch3x3_2",
         **{f"tower_1/{c}": f"branch7x7x3_{j + 1}" for j, c in enumerate(_conv_names(4))}}
_TV_E = {"conv": "branch1x1", "tower/conv": "branch3x3_1", "tower/mixed/conv": "branch3x3_2a",
         "tower/mixed/conv_1": "branch3x3_2b", "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
         "tower_1/mixed/conv": "branch3x3dbl_3a", "tower_1/mixed/conv_1": "branch3x3dbl_3b",
         "tower_2/conv": "branch_pool"}
_TV_LAYERS = {"mixed": _TV_A, "mixed_1": _TV_A, "mixed_2": _TV_A, "mixed_3": _TV_B, "mixed_4": _TV_C,
              "mixed_5": _TV_C, "mixed_6": _TV_C, "mixed_7": _TV_C, "mixed_8": _TV_D, "mixed_9": _TV_E,
              "mixed_10": _TV_E}
_TV_PARAMS = {"weight": "conv.weight", "gamma": "bn.weight", "beta": "bn.bias", "moving_mean": "bn.running_mean",
              "moving_variance": "bn.running_var"}


def torchvision_name(layer: str) -> str:
    """Graph layer name -> torchvision Inception3 module name.

    ``mixed_4/tower_1/conv_2`` -> ``Mixed_6b.branch7x7dbl_3``.
    """
    block, _, rest = layer.partition("/")
    return _TV_BLOCKS[block] if not rest else f"{_TV_BLOCKS[block]}.{_TV_LAYERS[block][rest]}"


def load_torchvision_inception(path: str) -> dict[str, Tensor]:
    """A torchvision ``inception_v3`` state dict (e.g. ``inception_v3_google-0cc3c7bd.pth``) for
    ``InceptionV3(variant="torchvision")``, read with ``torch.load(weights_only=True)``.

    **Not the dataset's features.** torchvision's Inception-v3 is a later model (ported from the 2016 TF-slim
    checkpoint, trained differently from the 2015-12-05 graph), its pools differ (padding counted in the average
    pools, an average pool in the last block) and its preprocessing differs (``preprocess(variant="torchvision")``).
    Features from it only approximate YouTube-8M's: a model trained on the dataset sees a different input
    distribution. Use it for your own datasets, or when the 2015 graph is not available. A warning says so.

    Raises:
        DataError: not a torch state dict, or a key / shape that does not match.
    """
    warnings.warn(f"{path}: torchvision Inception-v3 weights are a later, different model than the 2015-12-05 graph "
                  f"that made YouTube-8M; its features only approximate the dataset's", stacklevel=2)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line
        from attncluster.extract.vggish import torch_load_reason

        raise DataError(f"{path}: not a torch state dict ({torch_load_reason(e)})") from None
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise DataError(f"{path}: not a state dict of tensors")
    model = InceptionV3(variant="torchvision", empty=True)
    state: dict[str, Tensor] = {}
    for layer, m in conv_layers(model).items():
        tv = torchvision_name(layer)
        for ours, theirs in _TV_PARAMS.items():
            key = f"{tv}.{theirs}"
            want = getattr(m, ours).shape
            if key not in raw:
                raise DataError(f"{path}: no {key!r}; is this a torchvision inception_v3 state dict?")
            if tuple(raw[key].shape) != tuple(want):
                raise DataError(f"{path}: {key} has shape {list(raw[key].shape)}, expected {list(want)}")
            state[f"{layer.replace('/', '.')}.{ours}"] = raw[key].float()
    return state
