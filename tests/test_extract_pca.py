"""extract.pca: the YouTube-8M PCA + quantization and AudioSet's VGGish post-processing, against plain numpy."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
import torch

from attncluster.errors import DataError
from attncluster.extract.pca import VGGishPCA, YT8MPCA, load_vggish_pca, load_yt8m_pca, quantize

RNG = np.random.default_rng(0)


def official_quantize(features: np.ndarray) -> bytes:
    """extract_tfrecords_main.quantize, element by element (Python 3 round: half to even)."""
    features = np.clip(features.astype(np.float32), -2.0, 2.0)
    features = (features - -2.0) * (255.0 / 4.0)
    return bytes(int(round(f)) for f in features)


def test_quantize_matches_official_including_edges():
    bin_ = np.float32(4 / 255)
    x = np.concatenate([
        RNG.normal(0, 1.5, 500).astype(np.float32),
        np.array([-2.0, 2.0, -2.0001, 2.0001, -50.0, 50.0, 0.0, -1.0, 1.0], np.float32),
        # exactly half-way between two levels: (x + 2) * 63.75 = k + 0.5 -> banker's rounding decides
        ((np.arange(10, dtype=np.float32) + np.float32(0.5)) / np.float32(63.75) - np.float32(2.0)),
        np.float32(-2.0) + bin_ * np.arange(256, dtype=np.float32),
    ])
    q = quantize(x)
    assert q.dtype == np.uint8
    assert q.tobytes() == official_quantize(x)
    assert q[500:506].tolist() == [0, 255, 0, 255, 0, 255]
    # dequantize (the dataset's: q * 4/255 + 4/512 - 2) lands within half a level of the clipped value
    deq = q.astype(np.float64) * 4 / 255 + 4 / 512 - 2
    assert np.all(np.abs(deq - np.clip(x, -2, 2)) <= 4 / 255)


def test_quantize_custom_range():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 3.0], np.float32)
    # (x + 1) * 255 / 2: 0, 127.5 -> 128 (even), 191.25 -> 191, 255, clip 255
    assert quantize(x, min_q=-1.0, max_q=1.0).tolist() == [0, 128, 191, 255, 255]


def random_pca_arrays(k: int = 1100):
    mean = RNG.normal(0, 1, (2048, 1))
    vals = np.sort(RNG.uniform(0.01, 3.0, (k, 1)), axis=0)[::-1]
    vecs = (RNG.normal(0, 1, (k, 2048)) / 45.0).astype(np.float32)  # the real file's dtype
    return mean.astype(np.float32), vals.astype(np.float32), vecs


def reference_pca(x, mean, vals, vecs):
    """feature_extractor.apply_pca with the _load_pca slicing, float64."""
    m, e, v = mean[:, 0], vals[:1024, 0], vecs.T[:, :1024]
    return ((x - m) @ v) / np.sqrt(e + 1e-4)


def test_yt8m_pca_apply_and_folder_load(tmp_path):
    mean, vals, vecs = random_pca_arrays()
    for name, arr in (("mean.npy", mean), ("eigenvals.npy", vals), ("eigenvecs.npy", vecs)):
        np.save(tmp_path / name, arr)
    pca = load_yt8m_pca(str(tmp_path))
    assert pca.mean.shape == (2048,) and pca.eigenvals.shape == (1024,) and pca.eigenvecs.shape == (2048, 1024)
    x = RNG.normal(0, 2, (5, 2048)).astype(np.float32)
    ref = reference_pca(x.astype(np.float64), mean, vals, vecs)
    np.testing.assert_allclose(pca.apply(x), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pca.apply_torch(torch.from_numpy(x)).numpy(), ref, rtol=1e-4, atol=1e-4)
    # And quantized: equal to the official quantizer on the float64 reference, except at a bin edge (float32).
    diff = quantize(pca.apply(x)).astype(int) - np.frombuffer(official_quantize(ref.ravel()), np.uint8).reshape(5, -1)
    assert np.abs(diff).max() <= 1 and (diff != 0).mean() < 0.01


def write_tgz(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_yt8m_pca_tgz_is_read_in_memory(tmp_path):
    mean, vals, vecs = random_pca_arrays(1024)
    # Members under a folder and one with a traversal path: read by base name, nothing written anywhere.
    write_tgz(tmp_path / "yt8m_pca.tgz", {"yt8m/mean.npy": npy_bytes(mean), "../../eigenvals.npy": npy_bytes(vals),
                                          "eigenvecs.npy": npy_bytes(vecs)})
    before = set(os.listdir(tmp_path)) | set(os.listdir(tmp_path.parent))
    pca = load_yt8m_pca(str(tmp_path / "yt8m_pca.tgz"))
    assert set(os.listdir(tmp_path)) | set(os.listdir(tmp_path.parent)) == before
    np.testing.assert_allclose(pca.eigenvals, vals[:, 0].astype(np.float32))


def test_yt8m_pca_bad_files(tmp_path):
    mean, vals, vecs = random_pca_arrays(1024)
    write_tgz(tmp_path / "missing.tgz", {"mean.npy": npy_bytes(mean), "eigenvals.npy": npy_bytes(vals)})
    vecs = vecs[:, :1]  # the checks below fail before eigenvecs' shape matters; a small array keeps them quick
    with pytest.raises(DataError, match="no eigenvecs.npy"):
        load_yt8m_pca(str(tmp_path / "missing.tgz"))
    write_tgz(tmp_path / "shape.tgz", {"mean.npy": npy_bytes(mean[:100]), "eigenvals.npy": npy_bytes(vals),
                                       "eigenvecs.npy": npy_bytes(vecs)})
    with pytest.raises(DataError, match=r"mean.npy has shape \[100, 1\]"):
        load_yt8m_pca(str(tmp_path / "shape.tgz"))
    # A pickled object array is refused (allow_pickle=False), as is a text file.
    write_tgz(tmp_path / "pickle.tgz", {"mean.npy": npy_bytes(np.array([{"a": 1}], dtype=object)),
                                        "eigenvals.npy": npy_bytes(vals), "eigenvecs.npy": npy_bytes(vecs)})
    with pytest.raises(DataError, match="mean.npy is not a .npy array"):
        load_yt8m_pca(str(tmp_path / "pickle.tgz"))
    (tmp_path / "notes.tgz").write_text("hello")
    with pytest.raises(DataError, match="not a readable tar archive") as e:
        load_yt8m_pca(str(tmp_path / "notes.tgz"))
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no such file"):
        load_yt8m_pca(str(tmp_path / "nope.tgz"))


def reference_postprocess(emb, vecs, means):
    """vggish_postprocess.Postprocessor.postprocess, as written there."""
    pca_applied = np.dot(vecs, (emb.T - means.reshape(-1, 1))).T
    clipped = np.clip(pca_applied, -2.0, 2.0)
    return ((clipped - -2.0) * (255.0 / (2.0 - -2.0))).astype(np.uint8)


def test_vggish_postprocess_matches_audioset(tmp_path):
    vecs = RNG.normal(0, 0.1, (128, 128))
    means = RNG.normal(0, 0.5, (128, 1))
    emb = RNG.normal(0, 3, (7, 128)).astype(np.float32)
    emb[0] = means[:, 0]  # PCA output exactly 0 -> 127.5 truncated to 127
    np.savez(tmp_path / "vggish_pca_params.npz", pca_eigen_vectors=vecs, pca_means=means)
    pca = load_vggish_pca(str(tmp_path / "vggish_pca_params.npz"))
    out = pca.postprocess(emb)
    np.testing.assert_array_equal(out, reference_postprocess(emb, vecs, means))
    assert out.dtype == np.uint8 and np.all(out[0] == 127)
    assert (out == 0).any() and (out == 255).any()  # both clip edges reached
    # The torchvggish port's .pth: a dict of numpy arrays (or tensors), read without running code.
    torch.save({"pca_eigen_vectors": vecs, "pca_means": means}, tmp_path / "vggish_pca_params-970ea276.pth")
    np.testing.assert_array_equal(load_vggish_pca(str(tmp_path / "vggish_pca_params-970ea276.pth")).postprocess(emb),
                                  out)
    torch.save({"pca_eigen_vectors": torch.from_numpy(vecs), "pca_means": torch.from_numpy(means)},
               tmp_path / "tensors.pth")
    np.testing.assert_array_equal(load_vggish_pca(str(tmp_path / "tensors.pth")).postprocess(emb), out)
    # torchvggish's 2019 file: torch's legacy format, pickled by numpy 1.x (numpy.core.multiarray._reconstruct).
    buf = io.BytesIO()
    torch.save({"pca_eigen_vectors": vecs, "pca_means": means}, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # protocol 2: text names
    assert b"numpy.core.multiarray" in legacy
    (tmp_path / "legacy.pth").write_bytes(legacy)
    np.testing.assert_array_equal(load_vggish_pca(str(tmp_path / "legacy.pth")).postprocess(emb), out)


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never print",))


def test_vggish_pca_bad_files(tmp_path):
    np.savez(tmp_path / "bad.npz", pca_eigen_vectors=np.zeros((64, 128)), pca_means=np.zeros(128))
    with pytest.raises(DataError, match=r"pca_eigen_vectors has shape \[64, 128\]"):
        load_vggish_pca(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "nokey.npz", other=np.zeros(3))
    with pytest.raises(DataError, match="no 'pca_eigen_vectors'"):
        load_vggish_pca(str(tmp_path / "nokey.npz"))
    torch.save({"pca_eigen_vectors": RunsCode()}, tmp_path / "code.pth")
    with pytest.raises(DataError, match="code.pth: not a torch weights file .*Unsupported global"):
        load_vggish_pca(str(tmp_path / "code.pth"))
    (tmp_path / "junk.pth").write_text("not torch")
    with pytest.raises(DataError, match="not a torch weights file") as e:
        load_vggish_pca(str(tmp_path / "junk.pth"))
    assert "\n" not in str(e.value)


def test_random_pcas_are_deterministic():
    a, b, c = (YT8MPCA.random(s, in_dim=256, out_dim=128) for s in (3, 3, 4))
    assert np.array_equal(a.eigenvecs, b.eigenvecs) and not np.array_equal(a.eigenvecs, c.eigenvecs)
    assert a.eigenvecs.shape == (256, 128) and a.eigenvecs.dtype == np.float32
    assert np.array_equal(VGGishPCA.random(3).eigen_vectors, VGGishPCA.random(3).eigen_vectors)
