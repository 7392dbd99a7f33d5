"""extract.features.FeaturePipeline: the random-weights pipeline (shapes, dtypes, determinism, batching, the
PCA/quantization wiring against plain numpy) and one-line errors for missing or wrong weight files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attncluster.errors import ConfigError, DataError
from attncluster.extract import features as feat
from attncluster.extract.features import FeaturePipeline
from attncluster.extract.pca import quantize

RNG = np.random.default_rng(0)
FRAMES = RNG.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)  # each frame costs a 299 x 299 Inception pass
WAV = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)  # 2 s: 2 examples


@pytest.fixture(scope="module")
def pipe():
    return FeaturePipeline.create(random_weights=0, batch_size=2)


@pytest.fixture(scope="module")
def outputs(pipe):
    rgb, pooled = pipe.frame_and_pool_features(FRAMES)
    return rgb, pooled, pipe.audio_features(WAV, 16000)


def test_random_pipeline_shapes_and_dtypes(pipe, outputs):
    rgb, pooled, audio = outputs
    assert pipe.modalities == {"rgb": 1024, "audio": 128}
    assert pipe.quantized and pipe.frame_size is None and not pipe.faithful
    assert pipe.sources["inception"] == "random:0"
    assert rgb.shape == (2, 1024) and rgb.dtype == np.uint8
    assert pooled.shape == (2, 2048) and pooled.dtype == np.float32 and (pooled >= 0).all()  # pool of Relu outputs
    assert audio.shape == (2, 128) and audio.dtype == np.uint8
    # The random PCA is scaled to the random nets' outputs: values spread, not stuck at the clip edges.
    assert rgb.std() > 5 and ((rgb == 0) | (rgb == 255)).mean() < 0.5
    assert pipe.frame_features(FRAMES[:0]).shape == (0, 1024)
    assert pipe.audio_features(WAV[:8000]).shape == (0, 128)  # under 0.975 s: no complete example
    assert pipe.audio_features(None).shape == (0, 128)


def test_frame_features_are_pool_then_pca_then_quantize(pipe, outputs):
    rgb, pooled, _ = outputs
    pca = pipe.pca
    ref = (pooled.astype(np.float64) - pca.mean) @ pca.eigenvecs / np.sqrt(pca.eigenvals.astype(np.float64) + 1e-4)
    diff = rgb.astype(int) - quantize(ref).astype(int)
    assert np.abs(diff).max() <= 1 and (diff != 0).mean() < 0.01  # float32 vs float64 at bin edges only


def test_audio_features_are_vggish_then_audioset_postprocess(pipe, outputs):
    _, _, audio = outputs
    emb = pipe.audio_embeddings(WAV, 16000)
    p = pipe.audio_pca
    ref = np.clip(p.eigen_vectors @ (emb.T - p.means[:, None]), -2, 2).T
    np.testing.assert_array_equal(audio, ((ref + 2) * (255 / 4)).astype(np.uint8))


def test_batching_and_determinism(pipe, outputs):
    rgb, pooled, audio = outputs
    # One frame per batch gives the same features as two per batch.
    pipe.batch_size = 1
    try:
        np.testing.assert_allclose(pipe.pool_features(FRAMES), pooled, rtol=1e-4, atol=1e-5)
    finally:
        pipe.batch_size = 2
    # Same seed, same pipeline: every random part (networks, PCAs) is equal, so the features are.
    again = FeaturePipeline.create(random_weights=0)
    for a, b in ((again.rgb_net, pipe.rgb_net), (again.audio_net, pipe.audio_net)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(again.pca.eigenvecs, pipe.pca.eigenvecs)
    np.testing.assert_array_equal(again.pca.mean, pipe.pca.mean)
    np.testing.assert_array_equal(again.audio_pca.eigen_vectors, pipe.audio_pca.eigen_vectors)
    np.testing.assert_array_equal(again.audio_features(WAV), audio)
    other = feat._seeded(1, 1).initial_seed() != feat._seeded(0, 1).initial_seed()
    assert other  # another seed draws other weights


def test_random_warning_once(capfd, monkeypatch):
    monkeypatch.setattr(feat, "_WARNED_RANDOM", False)
    feat._warn_random(7)
    feat._warn_random(7)
    err = capfd.readouterr().err
    assert err.count("MEAN NOTHING") == 1 and "--random-weights 7" in err


def test_missing_weights_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match="--inception is required"):
        FeaturePipeline.create()
    pb = tmp_path / "classify_image_graph_def.pb"
    pb.write_bytes(b"\n\x03abc")
    with pytest.raises(ConfigError, match="--pca is required"):
        FeaturePipeline.create(inception=str(pb))
    with pytest.raises(ConfigError, match="--vggish is required"):
        FeaturePipeline.create(inception=str(pb), pca=str(tmp_path))
    with pytest.raises(ConfigError, match=r"--pca .*nope.tgz: no such file"):
        FeaturePipeline.create(inception=str(pb), pca=str(tmp_path / "nope.tgz"))
    with pytest.raises(ConfigError, match="--random-weights replaces every weight file; drop --inception"):
        FeaturePipeline.create(inception=str(pb), random_weights=0)
    with pytest.raises(ConfigError, match="--inception .*: is a folder"):
        FeaturePipeline.create(inception=str(tmp_path), pca=str(tmp_path), vggish=str(pb), vggish_pca=str(pb))
    with pytest.raises(ConfigError, match="--random-weights 'x': expected a seed"):
        FeaturePipeline.create(random_weights="x")


def test_wrong_weight_files_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("just text\nsecond line\n")
    ok_pca = tmp_path / "pca"
    ok_pca.mkdir()
    vg = tmp_path / "vggish.pth"
    vg.write_text("x")
    with pytest.raises(DataError) as e:  # a text file given as the Inception graph
        FeaturePipeline.create(inception=str(text), pca=str(ok_pca), vggish=str(vg), vggish_pca=str(vg))
    assert "notes.txt" in str(e.value) and "\n" not in str(e.value)
    graph = tmp_path / "g.pb"
    graph.write_bytes(b"\x0a\x05\x0a\x03abc")  # a valid GraphDef holding one node without an op
    with pytest.raises(DataError, match="not a TensorFlow GraphDef"):
        FeaturePipeline.create(inception=str(graph), pca=str(ok_pca), vggish=str(vg), vggish_pca=str(vg))
    ckpt = tmp_path / "vggish_model.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ConfigError, match="TensorFlow checkpoints are not read; use torchvggish"):
        feat._load_vggish(str(ckpt))
    with pytest.raises(DataError, match="vggish.pth: not a torch weights file"):
        feat._load_vggish(str(vg))


def test_bad_options_and_torchvision_error():
    with pytest.raises(ConfigError, match="--preset 'video'"):
        FeaturePipeline.create(preset="video")
    with pytest.raises(ConfigError, match="--precision 'int8'"):
        FeaturePipeline.create(precision="int8", random_weights=0)
    with pytest.raises(ConfigError, match="expected torchvision:NAME"):
        FeaturePipeline.create(preset="image", backbone="resnet50", weights="w.pth")
    with pytest.raises(ConfigError, match="--dtype 'int8'"):
        FeaturePipeline.create(preset="image", backbone="torchvision:resnet50", dtype="int8")
    with pytest.raises(ConfigError, match="--backbone/--weights are for --preset image"):
        FeaturePipeline.create(backbone="torchvision:resnet50", random_weights=0)
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or a build that does not load against this torch (as here)
        with pytest.raises(ConfigError, match=r"torchvision:resnet50 needs torchvision, which cannot be imported "
                                              r"here \(.+\)") as e:
            FeaturePipeline.create(preset="image", backbone="torchvision:resnet50", random_weights=0)
        assert "\n" not in str(e.value)
    else:
        pytest.skip("torchvision imports here: the error path cannot be exercised")


def test_image_preset_path_without_torchvision(monkeypatch):
    """The image preset's own code (preprocessing, pooled features, dtype) with a stand-in backbone module."""
    import torch
    from torch import nn

    class Pooled(nn.Module):  # a conv + global pool, what a torchvision classifier is after its head is removed
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3)

        def forward(self, x):
            assert x.shape[1:] == (3, 224, 224)
            return self.conv(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    monkeypatch.setattr(feat, "build_torchvision_backbone", lambda name, weights, seed: Pooled())
    pipe = FeaturePipeline.create(preset="image", backbone="torchvision:tiny", random_weights=1, dtype="float32")
    assert pipe.modalities == {"rgb": 5} and not pipe.quantized and pipe.audio_features(WAV) is None
    out = pipe.frame_features(FRAMES)
    assert out.shape == (2, 5) and out.dtype == np.float32
    # Plain computation: resize, ImageNet normalisation, the same module.
    x = torch.from_numpy(FRAMES).permute(0, 3, 1, 2).float() / 255
    x = nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(feat.IMAGENET_MEAN)[:, None, None]) / torch.tensor(feat.IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        ref = pipe.rgb_net(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    pipe16 = FeaturePipeline.create(preset="image", backbone="torchvision:tiny", random_weights=1, dtype="float16")
    assert pipe16.frame_features(FRAMES).dtype == np.float16
