"""The YouTube-8M PCA (2048 -> 1024, whitened), its quantization, and AudioSet's VGGish post-processing.

rgb, as google/youtube-8m ``feature_extractor/feature_extractor.py`` (the ``pca_final_feature`` ops, float32)::

    x (2048,) pool_3 -> (x - mean) . eigenvecs -> / sqrt(eigenvals + 1e-4) -> (1024,)

from ``yt8m_pca.tgz``: ``mean.npy`` (2048, 1), ``eigenvals.npy`` (K, 1), ``eigenvecs.npy`` (K, 2048), K >= 1024; the
extractor keeps ``mean[:, 0]``, ``eigenvals[:1024, 0]`` and ``eigenvecs.T[:, :1024]``. Then ``extract_tfrecords_main
.quantize``: clip to [-2, 2], ``(x + 2) * 255 / 4`` in float32, ``int(round(.))`` (half to even, Python 3).

audio, as AudioSet ``vggish_postprocess.Postprocessor``: ``pca_eigen_vectors . (x - pca_means)`` (no whitening
term: it is folded into the 128 x 128 matrix), clip to [-2, 2], ``(x + 2) * 255 / 4``, ``astype(uint8)``
(truncation, not rounding: the AudioSet release differs from the rgb quantizer here, and so do we).
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attncluster.errors import DataError

POOL_DIM = 2048
PCA_DIM = 1024
EIGENVAL_EPS = 1e-4
VGGISH_DIM = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
YT8M_PCA_FILES = ("mean.npy", "eigenvals.npy", "eigenvecs.npy")
_MAX_MEMBER_BYTES = 64 << 20  # eigenvecs.npy is 2048 x 2048 float32 = 16 MiB (or float64 32 MiB)


def quantize(x, min_q: float = QUANTIZE_MIN, max_q: float = QUANTIZE_MAX) -> np.ndarray:
    """YouTube-8M quantization, as ``extract_tfrecords_main.quantize``: float32 arithmetic, round half to even.

    ``round((clip(x, min_q, max_q) - min_q) * (255 / (max_q - min_q)))`` as uint8. The inverse is the dataset's
    ``dequantize`` (``q * range / 255 + range / 512 + min_q``, half a bin above the bin's value).
    """
    x = np.clip(np.asarray(x, dtype=np.float32), np.float32(min_q), np.float32(max_q))
    return np.rint((x - np.float32(min_q)) * np.float32(255.0 / (max_q - min_q))).astype(np.uint8)


def _shape_error(source: str, name: str, arr: np.ndarray, want: str) -> DataError:
    return DataError(f"{source}: {name} has shape {list(arr.shape)} ({arr.dtype}), expected {want}")


@dataclass
class YT8MPCA:
    """The rgb PCA: ``mean`` (2048,), ``eigenvals`` (1024,), ``eigenvecs`` (2048, 1024), float32."""

    mean: np.ndarray
    eigenvals: np.ndarray
    eigenvecs: np.ndarray

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32).reshape(-1)
        self.eigenvals = np.asarray(self.eigenvals, dtype=np.float32).reshape(-1)
        self.eigenvecs = np.asarray(self.eigenvecs, dtype=np.float32)
        d, k = self.eigenvecs.shape
        if self.mean.shape != (d,) or self.eigenvals.shape != (k,):
            raise ValueError(f"PCA shapes disagree: mean {self.mean.shape}, eigenvals {self.eigenvals.shape}, "
                             f"eigenvecs {self.eigenvecs.shape}")

    @property
    def in_dim(self) -> int:
        return self.eigenvecs.shape[0]

    @property
    def out_dim(self) -> int:
        return self.eigenvecs.shape[1]

    @classmethod
    def random(cls, seed: int, mean: np.ndarray | None = None, scale: float = 1.0, in_dim: int = POOL_DIM,
               out_dim: int = PCA_DIM) -> YT8MPCA:
        """A random PCA, deterministic from ``seed``: Gaussian unit-norm eigenvectors (near-orthogonal in 2048-d; a
        QR would cost seconds), eigenvalues around ``scale**2`` (so inputs of that spread around ``mean`` land inside
        the quantizer's range). For ``--random-weights`` runs."""
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((in_dim, out_dim), dtype=np.float32) / np.float32(np.sqrt(in_dim))
        eigenvals = np.sort(rng.uniform(0.5, 2.0, out_dim))[::-1] * scale ** 2
        mean = np.zeros(in_dim) if mean is None else mean
        return cls(mean=mean, eigenvals=eigenvals, eigenvecs=q)

    def apply(self, x) -> np.ndarray:
        """(N, 2048) -> (N, 1024) float32: ``(x - mean) . eigenvecs / sqrt(eigenvals + 1e-4)``."""
        x = np.asarray(x, dtype=np.float32)
        out = (x - self.mean) @ self.eigenvecs
        return (out / np.sqrt(self.eigenvals + np.float32(EIGENVAL_EPS))).astype(np.float32)

    def torch_params(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        """(mean, eigenvecs, sqrt(eigenvals + 1e-4)) as float32 tensors on ``device``."""
        root = np.sqrt(self.eigenvals + np.float32(EIGENVAL_EPS)).astype(np.float32)
        return (torch.from_numpy(self.mean).to(device), torch.from_numpy(self.eigenvecs).to(device),
                torch.from_numpy(root).to(device))

    def apply_torch(self, x: Tensor, params: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """The same in torch float32 on x's device: (N, 2048) -> (N, 1024). Divides, like the graph's ops."""
        mean, vecs, root = params if params is not None else self.torch_params(x.device)
        return ((x.float() - mean) @ vecs) / root


def _load_npy(data: bytes, source: str, name: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - not an .npy: one line
        raise DataError(f"{source}: {name} is not a .npy array ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise DataError(f"{source}: {name} is not a floating-point .npy array")
    return arr


def _read_tgz(path: str) -> dict[str, bytes]:
    """The three .npy members of ``yt8m_pca.tgz``, by base name; nothing is extracted to disk (no path traversal)."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if base not in YT8M_PCA_FILES or not member.isfile():
                    continue
                if member.size > _MAX_MEMBER_BYTES:
                    raise DataError(f"{path}: {member.name} is {member.size} bytes, more than a PCA file can be")
                f = tar.extractfile(member)
                out[base] = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable tar archive ({' '.join(str(e).split())[:160]})") from None
    return out


def load_yt8m_pca(path: str) -> YT8MPCA:
    """The YouTube-8M PCA from a folder with ``mean.npy``, ``eigenvals.npy``, ``eigenvecs.npy`` or from
    ``yt8m_pca.tgz`` (read in memory). Arrays are read with ``allow_pickle=False`` and their shapes checked.

    Raises:
        DataError: a missing file / member, a non-.npy member, a wrong shape.
    """
    if os.path.isdir(path):
        files = {}
        for name in YT8M_PCA_FILES:
            p = os.path.join(path, name)
            if not os.path.isfile(p):
                raise DataError(f"{path}: no {name} (expected mean.npy, eigenvals.npy, eigenvecs.npy from "
                                f"yt8m_pca.tgz)")
            with open(p, "rb") as f:
                files[name] = f.read()
    elif os.path.isfile(path):
        files = _read_tgz(path)
        missing = [n for n in YT8M_PCA_FILES if n not in files]
        if missing:
            raise DataError(f"{path}: no {', '.join(missing)} in the archive (expected yt8m_pca.tgz)")
    else:
        raise DataError(f"{path}: no such file or folder (the YouTube-8M PCA, yt8m_pca.tgz)")
    mean = _load_npy(files["mean.npy"], path, "mean.npy")
    vals = _load_npy(files["eigenvals.npy"], path, "eigenvals.npy")
    vecs = _load_npy(files["eigenvecs.npy"], path, "eigenvecs.npy")
    if mean.shape not in ((POOL_DIM, 1), (POOL_DIM,)):
        raise _shape_error(path, "mean.npy", mean, f"({POOL_DIM}, 1)")
    if vals.ndim not in (1, 2) or (vals.ndim == 2 and vals.shape[1] != 1) or vals.shape[0] < PCA_DIM:
        raise _shape_error(path, "eigenvals.npy", vals, f"(K, 1) with K >= {PCA_DIM}")
    if vecs.ndim != 2 or vecs.shape[1] != POOL_DIM or vecs.shape[0] < PCA_DIM:
        raise _shape_error(path, "eigenvecs.npy", vecs, f"(K, {POOL_DIM}) with K >= {PCA_DIM}")
    vals = vals.reshape(-1)[:PCA_DIM]
    if not np.all(np.isfinite(vals)) or np.any(vals + EIGENVAL_EPS <= 0):
        raise DataError(f"{path}: eigenvals.npy has non-finite or negative values")
    # As the extractor: mean[:, 0], eigenvals[:1024, 0], eigenvecs.T[:, :1024].
    return YT8MPCA(mean=mean.reshape(-1), eigenvals=vals, eigenvecs=vecs.T[:, :PCA_DIM])


# --------------------------------------------------------------------------------------------------------------------
# VGGish (AudioSet) post-processing


@dataclass
class VGGishPCA:
    """AudioSet's post-processor: ``pca_eigen_vectors`` (128, 128) and ``pca_means`` (128,)."""

    eigen_vectors: np.ndarray
    means: np.ndarray

    def __post_init__(self) -> None:
        self.eigen_vectors = np.asarray(self.eigen_vectors, dtype=np.float64)
        self.means = np.asarray(self.means, dtype=np.float64).reshape(-1)
        if self.eigen_vectors.shape != (VGGISH_DIM, VGGISH_DIM) or self.means.shape != (VGGISH_DIM,):
            raise ValueError(f"VGGish PCA shapes {self.eigen_vectors.shape}, {self.means.shape}, expected "
                             f"(128, 128), (128,)")

    @classmethod
    def random(cls, seed: int, means: np.ndarray | None = None, scale: float = 1.0) -> VGGishPCA:
        """A random rotation divided by ``scale``, deterministic from ``seed`` (``--random-weights``)."""
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((VGGISH_DIM, VGGISH_DIM)))
        means = np.zeros(VGGISH_DIM) if means is None else means
        return cls(eigen_vectors=q / scale, means=means)

    def apply(self, embeddings) -> np.ndarray:
        """(K, 128) -> (K, 128) float64: ``pca_eigen_vectors . (x - pca_means)`` per row."""
        x = np.asarray(embeddings)
        return (self.eigen_vectors @ (x.T - self.means[:, None])).T

    def postprocess(self, embeddings) -> np.ndarray:
        """(K, 128) raw VGGish embeddings -> (K, 128) uint8, exactly ``vggish_postprocess.Postprocessor``."""
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.shape[1] != VGGISH_DIM:
            raise ValueError(f"expected (K, 128) embeddings, got {x.shape}")
        clipped = np.clip(self.apply(x), QUANTIZE_MIN, QUANTIZE_MAX)
        return ((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))).astype(np.uint8)


def load_vggish_pca(path: str) -> VGGishPCA:
    """``vggish_pca_params.npz`` (AudioSet; arrays ``pca_eigen_vectors``, ``pca_means``) or the torchvggish port's
    ``vggish_pca_params-970ea276.pth`` (a dict with the same keys), read without running code.

    Raises:
        DataError: unreadable file, missing key, wrong shape.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (the VGGish PCA parameters, vggish_pca_params.npz)")
    with open(path, "rb") as f:
        head = f.read(4)
    params: dict[str, np.ndarray] = {}
    if head.startswith(b"PK") and path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                params = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable .npz ({' '.join(str(e).split())[:160]})") from None
    else:
        from attncluster.extract.vggish import load_torch_dict

        params = {k: np.asarray(v) for k, v in load_torch_dict(path).items()}
    for key in ("pca_eigen_vectors", "pca_means"):
        if key not in params:
            raise DataError(f"{path}: no {key!r} (expected the VGGish PCA parameters)")
    vecs, means = params["pca_eigen_vectors"], params["pca_means"]
    if vecs.shape != (VGGISH_DIM, VGGISH_DIM):
        raise _shape_error(path, "pca_eigen_vectors", vecs, "(128, 128)")
    if means.size != VGGISH_DIM:
        raise _shape_error(path, "pca_means", means, "(128,) or (128, 1)")
    return VGGishPCA(eigen_vectors=vecs, means=means)
