"""Frames and audio to features: :class:`FeaturePipeline`, the backbones + PCA + quantization behind ``extract``.

Presets:

- ``yt8m`` (default): the YouTube-8M features. rgb: the 2015-12-05 Inception graph's pool_3 (2048-d) -> the
  YouTube-8M PCA (1024-d, whitened) -> dataset quantization (uint8). audio: VGGish (128-d) -> AudioSet PCA ->
  AudioSet quantization (uint8). Faithful to the dataset with ``classify_image_graph_def.pb`` + ``yt8m_pca.tgz`` +
  the AudioSet VGGish weights; torchvision Inception-v3 weights only approximate it (a warning says so).
- ``image``: any torchvision image classifier's pooled features (``backbone="torchvision:resnet50"``, ``weights``
  a state dict file), float16 or float32, no PCA, no audio. For your own datasets, not YouTube-8M's features.

``random_weights=SEED`` builds every network and PCA from the seed instead of files, so decoding, batching and
the output format can be checked without the weight files; the features mean nothing, and a warning on stderr
says so (once per process).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from attncluster.errors import ConfigError, DataError
from attncluster.extract import inception as inc
from attncluster.extract import vggish as vgg
from attncluster.extract.pca import VGGishPCA, YT8MPCA, load_vggish_pca, load_yt8m_pca, quantize

PRESETS = ("yt8m", "image")
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"float16": np.float16, "float32": np.float32}
DEFAULT_BATCH = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
_WARNED_RANDOM = False


def _warn_random(seed: int, what: str = "Inception, VGGish and both PCAs are") -> None:
    global _WARNED_RANDOM
    if _WARNED_RANDOM:
        return
    _WARNED_RANDOM = True
    bar = "!" * 100
    print(f"{bar}\nWARNING: --random-weights {seed}: {what} RANDOM. The features MEAN NOTHING:\nthey only exercise "
          f"decoding, batching and the output format. Do not train on them or trust any prediction made from them."
          f"\n{bar}", file=sys.stderr, flush=True)


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"--random-weights {value!r}: expected a seed, an integer >= 0")
    return int(value)


def _seeded(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt) % (2 ** 63))


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _need(path: str | None, option: str, what: str, folder_ok: bool = False) -> str:
    """A local weight file (or, with ``folder_ok``, folder) named by ``option``; a one-line ConfigError otherwise."""
    if not path:
        raise ConfigError(f"{option} is required: {what} (or --random-weights SEED to test without weight files)")
    path = os.fspath(path)
    if not (os.path.isfile(path) or (folder_ok and os.path.isdir(path))):
        raise ConfigError(f"{option} {path}: no such file" if not os.path.isdir(path) else
                          f"{option} {path}: is a folder, expected a file")
    return path


@dataclass
class FeaturePipeline:
    """Backbones + post-processing for one preset; build with :meth:`create`.

    Attributes:
        preset: ``"yt8m"`` or ``"image"``.
        sources: what each part was loaded from (file paths, ``random:SEED``), for manifests and logs.
        faithful: True only for the yt8m preset with the 2015 graph (the dataset's own features).
    """

    preset: str
    device: torch.device
    precision: str
    rgb_net: nn.Module
    rgb_dim: int
    image_variant: str | None = None  # Inception preprocess variant, None for a torchvision backbone
    pca: YT8MPCA | None = None
    audio_net: nn.Module | None = None
    audio_pca: VGGishPCA | None = None
    out_dtype: type = np.uint8
    batch_size: int = DEFAULT_BATCH
    sources: dict[str, str] = field(default_factory=dict)
    faithful: bool = False
    _pca_params: tuple | None = None

    # ----------------------------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def create(cls, preset: str = "yt8m", inception: str | None = None, pca: str | None = None,
               vggish: str | None = None, vggish_pca: str | None = None, random_weights: int | None = None,
               backbone: str | None = None, weights: str | None = None, device: str | torch.device = "cpu",
               precision: str = "fp32", dtype: str = "float16", batch_size: int = DEFAULT_BATCH) -> FeaturePipeline:
        """Build a pipeline from weight files (or random weights).

        Args:
            preset: ``"yt8m"`` or ``"image"``.
            inception: yt8m: ``classify_image_graph_def.pb`` (the dataset's graph), or a torchvision
                ``inception_v3`` state dict ``.pth`` (an approximation, with a warning).
            pca: yt8m: ``yt8m_pca.tgz`` or the folder it unpacks to.
            vggish: yt8m: torchvggish's ``vggish-10086976.pth``.
            vggish_pca: yt8m: AudioSet's ``vggish_pca_params.npz`` or torchvggish's ``vggish_pca_params-970ea276.pth``.
            random_weights: a seed: random networks and PCAs instead of files (features mean nothing; warns).
            backbone: image: ``"torchvision:NAME"`` (any ``torchvision.models`` classifier).
            weights: image: that model's state dict file.
            device: ``cpu``, ``cuda``, ``cuda:1``, ...
            precision: ``fp32``, or ``bf16`` / ``fp16`` autocast for the networks (PCA stays float32).
            dtype: image preset output dtype, ``float16`` or ``float32``.
            batch_size: frames (or audio examples) per forward pass.

        Raises:
            ConfigError: unknown preset/precision/dtype, a missing weight file (naming its option), a bad device,
                torchvision unavailable for ``--backbone``.
            DataError: a weight file that is not what it should be.
        """
        if preset not in PRESETS:
            raise ConfigError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        dev = _device(device)
        if preset == "image":
            return cls._create_image(backbone, weights, random_weights, dev, precision, dtype, batch_size)
        if backbone or weights:
            raise ConfigError("--backbone/--weights are for --preset image; the yt8m preset takes --inception, --pca, "
                              "--vggish, --vggish-pca")
        sources: dict[str, str] = {}
        if random_weights is not None:
            random_weights = _seed(random_weights)
            given = [o for o, v in (("--inception", inception), ("--pca", pca), ("--vggish", vggish),
                                    ("--vggish-pca", vggish_pca)) if v]
            if given:
                raise ConfigError(f"--random-weights replaces every weight file; drop {', '.join(given)}")
            _warn_random(random_weights)
            rgb = _inference_ready(inc.InceptionV3(generator=_seeded(random_weights, 1)), dev)
            audio = vgg.VGGish(generator=_seeded(random_weights, 2)).to(dev).eval()
            rgb_pca, audio_pca = _random_pcas(rgb, audio, int(random_weights))
            variant = "graph2015"
            sources = {k: f"random:{random_weights}" for k in ("inception", "pca", "vggish", "vggish_pca")}
            faithful = False
        else:
            inception = _need(inception, "--inception", "the Inception graph classify_image_graph_def.pb (inside "
                                                        "inception-2015-12-05.tgz) or torchvision Inception-v3 weights")
            pca = _need(pca, "--pca", "the YouTube-8M PCA yt8m_pca.tgz (or its unpacked folder)", folder_ok=True)
            vggish = _need(vggish, "--vggish", "the VGGish weights (torchvggish vggish-10086976.pth)")
            vggish_pca = _need(vggish_pca, "--vggish-pca", "the VGGish PCA vggish_pca_params.npz (AudioSet) or "
                                                           "vggish_pca_params-970ea276.pth (torchvggish)")
            rgb, variant = _load_inception(inception)
            rgb = _inference_ready(rgb, dev)
            audio = _load_vggish(vggish).to(dev).eval()
            rgb_pca = load_yt8m_pca(pca)
            audio_pca = load_vggish_pca(vggish_pca)
            sources = {"inception": inception, "pca": pca, "vggish": vggish, "vggish_pca": vggish_pca}
            faithful = variant == "graph2015"
        pipe = cls(preset="yt8m", device=dev, precision=precision, rgb_net=rgb,
                   rgb_dim=rgb_pca.out_dim, image_variant=variant, pca=rgb_pca, audio_net=audio,
                   audio_pca=audio_pca, out_dtype=np.uint8, batch_size=batch_size, sources=sources, faithful=faithful)
        pipe._pca_params = rgb_pca.torch_params(dev)
        return pipe

    @classmethod
    def _create_image(cls, backbone, weights, random_weights, dev, precision, dtype, batch_size) -> FeaturePipeline:
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype {dtype!r}: expected float16 or float32")
        if not backbone or not backbone.startswith("torchvision:") or not backbone.split(":", 1)[1]:
            raise ConfigError(f"--backbone {backbone!r}: expected torchvision:NAME (e.g. torchvision:resnet50)")
        name = backbone.split(":", 1)[1]
        if random_weights is None:
            weights = _need(weights, "--weights", f"the {name} state dict file")
        else:
            random_weights = _seed(random_weights)
        model = build_torchvision_backbone(name, weights, random_weights)
        if random_weights is not None:
            _warn_random(random_weights, f"the {name} backbone's weights are")
        model = _channels_last(model, dev)
        with torch.inference_mode():
            dim = int(model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev)).flatten(1).shape[1])
        sources = {"backbone": backbone, "weights": weights or f"random:{random_weights}"}
        return cls(preset="image", device=dev, precision=precision, rgb_net=model, rgb_dim=dim, image_variant=None,
                   out_dtype=DTYPES[dtype], batch_size=batch_size, sources=sources, faithful=False)

    # ----------------------------------------------------------------------------------------------------------------
    # Interface

    @property
    def modalities(self) -> dict[str, int]:
        """Output modality -> feature size: yt8m ``{"rgb": 1024, "audio": 128}``; image ``{"rgb": D}``."""
        if self.audio_net is None:
            return {"rgb": self.rgb_dim}
        return {"rgb": self.rgb_dim, "audio": vgg.EMBEDDING_SIZE}

    @property
    def quantized(self) -> bool:
        """True when outputs are dataset-quantized uint8 (yt8m)."""
        return self.preset == "yt8m"

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """The (H, W) frames should be decoded at: None, any size (the backbone resizes, as the 2015 graph does)."""
        return None

    def _autocast(self):
        from attncluster.distributed import autocast_for

        return autocast_for(self.device, self.precision)

    def _check_frames(self, frames) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DataError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {list(frames.shape)}")
        return frames

    @torch.inference_mode()
    def pool_features(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, 2048) float32 Inception pool_3 (yt8m) / (T, D) pooled features (image),
        before PCA and quantization."""
        return self.frame_and_pool_features(frames)[1]

    def _forward_rgb(self, batch: np.ndarray) -> Tensor:
        if self.image_variant is not None:
            x = inc.preprocess(batch, variant=self.image_variant, device=self.device)
        else:
            x = _imagenet_preprocess(batch, self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.rgb_net(x).flatten(1)

    @torch.inference_mode()
    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, D): uint8 dataset-quantized PCA features (yt8m), or float16/32 (image).

        Any T (0 included); frames of several videos may be concatenated into one call. Runs in batches of
        ``batch_size`` frames on ``device``; the PCA runs there in float32 right after the network.
        """
        return self.frame_and_pool_features(frames)[0]

    @torch.inference_mode()
    def frame_and_pool_features(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both :meth:`frame_features` and :meth:`pool_features` from one pass over the network."""
        frames = self._check_frames(frames)
        feats, pools = [], []
        for i in range(0, len(frames), self.batch_size):
            pooled = self._forward_rgb(frames[i:i + self.batch_size]).float()
            pools.append(pooled.cpu().numpy())
            if self.pca is not None:
                feats.append(quantize(self.pca.apply_torch(pooled, self._pca_params).cpu().numpy()))
            else:
                feats.append(pools[-1].astype(self.out_dtype))
        if not feats:
            width = inc.FEATURE_DIM if self.preset == "yt8m" else self.rgb_dim
            return np.zeros((0, self.rgb_dim), dtype=self.out_dtype), np.zeros((0, width), dtype=np.float32)
        return np.concatenate(feats), np.concatenate(pools)

    @torch.inference_mode()
    def audio_embeddings(self, wav: np.ndarray, sample_rate: int = vgg.SAMPLE_RATE) -> np.ndarray:
        """(S,) waveform -> (K, 128) float32 raw VGGish embeddings (before the AudioSet PCA)."""
        if self.audio_net is None:
            raise ConfigError(f"the {self.preset} preset has no audio")
        examples = vgg.waveform_to_examples(np.asarray(wav, dtype=np.float32), sample_rate)  # (K, 96, 64)
        x = torch.from_numpy(examples).unsqueeze(1)  # (K, 1, 96, 64)
        out = []
        for i in range(0, len(x), self.batch_size):
            with self._autocast():
                out.append(self.audio_net(x[i:i + self.batch_size].to(self.device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, vgg.EMBEDDING_SIZE), dtype=np.float32)

    def audio_features(self, wav: np.ndarray | None, sample_rate: int = vgg.SAMPLE_RATE) -> np.ndarray | None:
        """(S,) float32 waveform -> (K, 128) uint8 (VGGish -> AudioSet PCA -> quantization), one row per complete
        0.96 s; None when the preset has no audio."""
        if self.audio_net is None or self.audio_pca is None:
            return None
        if wav is None:
            return np.zeros((0, vgg.EMBEDDING_SIZE), dtype=np.uint8)
        emb = self.audio_embeddings(wav, sample_rate)
        if len(emb) == 0:
            return np.zeros((0, vgg.EMBEDDING_SIZE), dtype=np.uint8)
        return self.audio_pca.postprocess(emb)


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _inference_ready(model: inc.InceptionV3, device: torch.device) -> inc.InceptionV3:
    """Inception on ``device`` with batch norm folded into channels-last convolutions (inference only; the
    module's own parameters stay as loaded, so no second copy of them is made)."""
    return model.to(device).eval().fold_batch_norm()


def _channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """On ``device`` in eval mode, conv weights channels-last (1.6x faster Inception on this CPU; same math)."""
    return model.to(device=device, memory_format=torch.channels_last).eval()


@torch.inference_mode()
def _random_pcas(rgb: nn.Module, audio: nn.Module, seed: int) -> tuple[YT8MPCA, VGGishPCA]:
    """Random PCAs centred and scaled on the random networks' outputs for fixed noise inputs, so the quantized
    random features spread over 0..255 instead of saturating (they still mean nothing)."""
    rng = np.random.default_rng(seed)
    # One smooth random image through the real preprocessing (299 x 299: at the network's smallest input, 75 x 75,
    # the pooled features have another scale), and 2 s of noisy tones.
    frames = rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    pooled = rgb(inc.preprocess(frames).contiguous(memory_format=torch.channels_last)).double().numpy()
    t = np.arange(2 * vgg.SAMPLE_RATE) / vgg.SAMPLE_RATE
    wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(len(t))
    emb = audio(torch.from_numpy(vgg.waveform_to_examples(wav, vgg.SAMPLE_RATE)).unsqueeze(1)).double().numpy()
    rgb_pca = YT8MPCA.random(seed * 4 + 1, mean=pooled.mean(0))
    # Scale: the projected outputs' own size (not their spread around the mean of two calibration inputs, which
    # is tiny next to what other inputs do), so other inputs mostly land inside the quantizer's +-2.
    spread = float((pooled @ rgb_pca.eigenvecs).std()) + 1e-6
    rgb_pca.eigenvals = (rgb_pca.eigenvals * spread ** 2).astype(np.float32)  # scale=spread, without a second draw
    audio_pca = VGGishPCA.random(seed * 4 + 2, means=emb.mean(0))
    spread = float(audio_pca.apply(emb + emb.mean(0)).std()) + 1e-6
    audio_pca = VGGishPCA.random(seed * 4 + 2, means=emb.mean(0), scale=spread)
    return rgb_pca, audio_pca


def _load_inception(path: str) -> tuple[inc.InceptionV3, str]:
    """``.pb`` -> the 2015 graph (faithful); anything else is read as a torchvision state dict (approximate)."""
    with open(path, "rb") as f:
        head = f.read(2)
    # A torch zip archive starts with "PK"; a legacy torch pickle with 0x80. A GraphDef starts with field 1 (0x0a).
    if path.endswith(".pb") or head[:1] == b"\x0a":
        return inc.InceptionV3.from_graphdef(path), "graph2015"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = inc.load_torchvision_inception(path)
    print(f"warning: --inception {path}: torchvision Inception-v3 weights are a later, different model than the "
          f"2015-12-05 graph that made YouTube-8M (different pools and preprocessing): the features only "
          f"approximate the dataset's", file=sys.stderr, flush=True)
    model = inc.InceptionV3(variant="torchvision", empty=True)
    model.load_state_dict(state, assign=True)
    return model, "torchvision"


def _load_vggish(path: str) -> vgg.VGGish:
    if path.endswith((".ckpt", ".index", ".meta")) or ".ckpt" in os.path.basename(path):
        raise ConfigError(f"--vggish {path}: TensorFlow checkpoints are not read; use torchvggish's "
                          f"vggish-10086976.pth (the same weights converted to PyTorch)")
    model = vgg.VGGish(empty=True)
    model.load_state_dict(vgg.load_torchvggish_weights(path), assign=True)
    return model


def build_torchvision_backbone(name: str, weights: str | None, random_weights: int | None) -> nn.Module:
    """``torchvision.models.get_model(name)`` with ``weights`` loaded (``weights_only=True``) and its classifier
    head replaced by an identity, so it returns pooled features. torchvision is imported here only."""
    try:
        import torchvision  # noqa: F401
        from torchvision import models
    except Exception as e:  # noqa: BLE001 - ImportError, or a build that does not load against this torch
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(f"--backbone torchvision:{name} needs torchvision, which cannot be imported here "
                          f"({reason}); install a torchvision build that matches your torch "
                          f"(pip install 'attncluster[vision]')") from None
    try:
        if random_weights is not None:
            torch.manual_seed(int(random_weights))
        model = models.get_model(name, weights=None)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--backbone torchvision:{name}: not a torchvision model ({' '.join(str(e).split())[:160]})"
                          ) from None
    if weights:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except FileNotFoundError:
            raise ConfigError(f"--weights {weights}: no such file") from None
        except Exception as e:  # noqa: BLE001
            raise DataError(f"--weights {weights}: not {name} weights ({' '.join(str(e).split())[:200]})") from None
    for head in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(model, head, None), nn.Module):
            setattr(model, head, nn.Identity())
            break
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        model.AuxLogits = None
    return model


def _imagenet_preprocess(frames: np.ndarray, device: torch.device) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, 224, 224) float32: antialiased bilinear resize, ImageNet mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                                        antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    return (x - mean) / std
