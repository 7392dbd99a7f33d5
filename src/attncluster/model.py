"""Attention Clusters for video classification.

Long, Gan, de Melo, Wu, Liu, Wen: "Attention Clusters: Purely Attention Based Local Feature Integration for
Video Classification", CVPR 2018 (arXiv 1711.09550).

Each modality (rgb, audio, flow, ...) gets a cluster of C attention units. A unit scores every frame, pools the
frames with a softmax over time, and applies the paper's *shifting operation*: a learnable scalar scale and bias,
then L2 normalisation, so that units in one cluster learn to attend to different things. The cluster outputs are
concatenated and classified by an MLP. Two switches give the paper's ablations (its Flash-MNIST table): ``shifting``
(off: the plain attention-pooled features) and ``attention`` (``fc1``: a linear score per frame; ``fc2``: two layers);
their defaults are the reference model. The math, the parameter initialisation and the dropout follow the
PaddlePaddle reference implementation exactly, so a fresh model trains with the reference's dynamics; all C units of a
cluster run as one batched matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

L2_EPS = 1e-12  # Paddle l2_normalize epsilon, inside the square root
# Version of the state dict's parameterisation, stored in every weights file we write. 2: DowngradeDropout, fc1 holds
# the reference's own weights. Files without it (1) come from the inverted-dropout model, whose fc1 weight was (1 - p)
# times this one's for the same function; attncluster.weights rescales them on load.
STATE_FORMAT = 2
FORMAT_KEY = "weights_format"  # checkpoint dict entry and safetensors metadata key holding STATE_FORMAT
ATTENTIONS = ("fc1", "fc2")  # the attention units' scoring functions (model.attention)
FC2_HIDDEN = 128  # hidden units of the fc2 scoring (the size in the first author's Flash-MNIST experiments)


class ShiftingAttention(nn.Module):
    """One attention cluster: C attention units over (N, L, F) frames, with or without the shifting operation.

    Args:
        feature_dim: F, the size of one frame's features.
        num_clusters: C, the number of attention units.
        shifting: apply the paper's shifting operation to each unit's output (a learnable scalar scale and bias, L2
            normalisation over F, then 1/sqrt(C)); off, a unit's output is its plain attention-pooled features.
        attention: the scoring function. ``fc1``: one linear score per frame and unit (the reference's 1x1 conv).
            ``fc2``: the paper's two-layer scoring, ``w2 . tanh(W1 x + b1) + b2``, with a hidden layer of
            :data:`FC2_HIDDEN` units shared by the C units (as in the first author's Flash-MNIST setup).
    """

    def __init__(self, feature_dim: int, num_clusters: int, shifting: bool = True, attention: str = "fc1") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.feature_dim = feature_dim
        self.num_clusters = num_clusters
        self.shifting = shifting
        self.attention_kind = attention
        if attention == "fc2":
            self.score_hidden = nn.Linear(feature_dim, FC2_HIDDEN)  # W1, b1: F -> H, then tanh
            self.score = nn.Linear(FC2_HIDDEN, num_clusters)  # w2, b2: H -> C
        else:
            # The reference uses a 1x1 conv F -> C: the same as one linear score per frame and unit.
            self.score = nn.Linear(feature_dim, num_clusters)
        if shifting:
            self.shift_w = nn.Parameter(torch.empty(num_clusters))
            self.shift_b = nn.Parameter(torch.empty(num_clusters))
        self.reset_parameters()

    @property
    def out_dim(self) -> int:
        return self.num_clusters * self.feature_dim

    def reset_parameters(self) -> None:
        # Paddle MSRA: normal std sqrt(2 / fan_in) for weights; uniform +-sqrt(6 / len) for the bias (a 1-D
        # tensor's fan_in is its own length); the shifting scalars are N(0, C^-1/4).
        layers = [self.score_hidden, self.score] if self.attention_kind == "fc2" else [self.score]
        for fc in layers:
            nn.init.normal_(fc.weight, std=math.sqrt(2.0 / fc.in_features))
            bound = math.sqrt(6.0 / fc.out_features)
            nn.init.uniform_(fc.bias, -bound, bound)
        if self.shifting:
            std = self.num_clusters ** -0.25
            nn.init.normal_(self.shift_w, std=std)
            nn.init.normal_(self.shift_b, std=std)

    def attention(self, x: Tensor) -> Tensor:
        """Attention weights (N, L, C): each unit's softmax over the L frames."""
        if self.attention_kind == "fc2":
            x = torch.tanh(self.score_hidden(x))  # (N, L, F) -> (N, L, H)
        scores = self.score(x)  # (N, L, F or H) -> (N, L, C)
        return scores.softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, L, F) frames -> (N, C * F) cluster features, cluster-major (index c * F + f)."""
        a = self.attention(x)  # (N, L, C)
        v = torch.bmm(a.transpose(1, 2), x)  # (N, C, L) @ (N, L, F) -> (N, C, F)
        if self.shifting:
            v = v * self.shift_w[:, None] + self.shift_b[:, None]  # shifting: scalar scale and bias per unit
            v = v * torch.rsqrt(v.pow(2).sum(dim=-1, keepdim=True) + L2_EPS)  # L2 over F, eps inside the sqrt
            v = v / math.sqrt(self.num_clusters)
        return v.flatten(1)  # (N, C, F) -> (N, C * F)

    def extra_repr(self) -> str:
        return f"attention={self.attention_kind}, shifting={self.shifting}"


class DowngradeDropout(nn.Module):
    """Paddle's default ``dropout_implementation="downgrade_in_infer"``, the reference's dropout.

    Training multiplies by a keep mask WITHOUT the 1 / (1 - p) rescale of ``nn.Dropout``; inference multiplies by
    (1 - p). The two agree in expectation, as with inverted dropout, but the layer after it sees inputs (1 - p) times
    smaller in both modes, which is what the reference's initialisation and learning rate were tuned with.

    Args:
        p: probability of zeroing an element, in [0, 1).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def sample_mask(self, x: Tensor) -> Tensor:
        """The keep mask for ``x``: 1 with probability 1 - p, else 0, same shape and dtype."""
        return torch.empty_like(x).bernoulli_(1.0 - self.p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0:
            return x
        if self.training:
            return x * self.sample_mask(x)
        return x * (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AttentionCluster(nn.Module):
    """The multi-modal Attention Cluster classifier.

    Args:
        feature_dims: modality name -> feature size, in input order (e.g. ``{"rgb": 1024, "audio": 128}``).
        cluster_nums: attention units per modality: one int for all, or a dict per modality.
        num_classes: number of output logits.
        drop_rate: dropout on the concatenated cluster features, Paddle's downgrade-in-infer kind (0 disables it).
        hidden_sizes: the MLP's hidden layers, each followed by tanh (empty: one linear layer to the logits).
        shifting: the shifting operation in every attention unit (the reference: on).
        attention: the units' scoring function, ``fc1`` (the reference) or ``fc2`` (see :class:`ShiftingAttention`).
    """

    def __init__(
        self,
        feature_dims: Mapping[str, int] | None = None,
        cluster_nums: int | Mapping[str, int] = 32,
        num_classes: int = 3862,
        drop_rate: float = 0.5,
        hidden_sizes: Sequence[int] = (1024, 4096),
        shifting: bool = True,
        attention: str = "fc1",
    ) -> None:
        super().__init__()
        feature_dims = dict({"rgb": 1024, "audio": 128} if feature_dims is None else feature_dims)
        if not feature_dims:
            raise ValueError("feature_dims must name at least one modality")
        if isinstance(cluster_nums, Mapping):
            missing = [m for m in feature_dims if m not in cluster_nums]
            if missing:
                raise ValueError(f"cluster_nums has no entry for modalities {missing}")
            clusters = {m: int(cluster_nums[m]) for m in feature_dims}
        else:
            clusters = {m: int(cluster_nums) for m in feature_dims}
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")

        self.feature_dims = feature_dims
        self.cluster_nums = clusters
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.hidden_sizes = tuple(hidden_sizes)
        self.shifting = bool(shifting)
        self.attention_kind = attention

        self.attention = nn.ModuleDict({m: ShiftingAttention(feature_dims[m], clusters[m], self.shifting, attention)
                                        for m in feature_dims})
        self.dropout = DowngradeDropout(drop_rate)
        sizes = [self.num_features, *self.hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.logits = nn.Linear(sizes[-1], num_classes)
        self.reset_head()

    @property
    def num_features(self) -> int:
        """Size of the concatenated cluster features, sum over modalities of C * F."""
        return sum(unit.out_dim for unit in self.attention.values())

    def reset_head(self) -> None:
        """Reference initialisation of the MLP: MSRA normal weights, MSRA uniform biases, normal logits bias."""
        for fc in [*self.hidden, self.logits]:
            nn.init.normal_(fc.weight, std=math.sqrt(2.0 / fc.in_features))
            bound = math.sqrt(6.0 / fc.out_features)
            nn.init.uniform_(fc.bias, -bound, bound)
        nn.init.normal_(self.logits.bias, std=math.sqrt(2.0 / self.num_classes))

    def forward_features(self, features: Mapping[str, Tensor]) -> Tensor:
        """Concatenated cluster features: {m: (N, L, F_m)} -> (N, sum_m C_m * F_m), modalities in order."""
        missing = [m for m in self.feature_dims if m not in features]
        if missing:
            raise KeyError(f"missing input modalities {missing}; the model expects {list(self.feature_dims)}")
        return torch.cat([unit(features[m]) for m, unit in self.attention.items()], dim=1)

    def attention_weights(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each unit's attention over the frames: {m: (N, L, F_m)} -> {m: (N, L, C_m)}, summing to 1 over L.

        The very weights the forward pass pools with (``ShiftingAttention.attention``); in eval mode they are the
        ones behind a prediction (dropout acts after pooling, so it never changes them).
        """
        missing = [m for m in self.feature_dims if m not in features]
        if missing:
            raise KeyError(f"missing input modalities {missing}; the model expects {list(self.feature_dims)}")
        return {m: unit.attention(features[m]) for m, unit in self.attention.items()}

    def forward_head(self, x: Tensor) -> Tensor:
        """(N, num_features) cluster features -> (N, num_classes) logits."""
        x = self.dropout(x)
        for fc in self.hidden:
            x = torch.tanh(fc(x))  # (N, H_i)
        return self.logits(x)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """{m: (N, L, F_m) float} -> (N, num_classes) logits (apply sigmoid for probabilities)."""
        return self.forward_head(self.forward_features(features))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
