from pathlib import Path

import pytest

from attncluster.config import Config, load_config
from attncluster.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"youtube8m.yaml", "youtube8m_video_level.yaml", "kinetics.yaml", "quickstart.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_a_comment(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{path.name} must open with a comment saying what it is for"
    assert "attncluster" in path.read_text().split("model:")[0], f"{path.name} header must give the command"


def test_reference_config_values():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "youtube8m.yaml")
    assert cfg.model.feature_dims == {"rgb": 1024, "audio": 128}
    assert (cfg.model.seg_num, cfg.model.cluster_nums, cfg.model.num_classes) == (100, 32, 3862)
    assert cfg.model.drop_rate == 0.5 and cfg.model.hidden_sizes == [1024, 4096]
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.train.schedule) == ("adam", 1e-3, "constant")
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.eval.top_k, cfg.train.weight_decay) == (2048, 5, 20, 0.0)
    assert cfg.data.train == ["data/yt8m/frame/train/*.tfrecord"]
    assert cfg.data.valid == ["data/yt8m/frame/validate/*.tfrecord"]


def test_kinetics_config_is_single_label_three_modalities():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "kinetics.yaml")
    assert list(cfg.model.feature_dims) == ["rgb", "flow", "audio"]
    assert cfg.model.feature_dims == {"rgb": 2048, "flow": 2048, "audio": 128}
    assert cfg.model.num_classes == 400 and cfg.train.loss == "ce" and not cfg.multi_label


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["train.batch_size=256", "model.drop_rate=0.3", "train.learning_rate=3e-4",
                             "data.train=a/*.tfrecord", "model.feature_dims.rgb=2048", "model.cluster_nums={rgb: 8, audio: 4}"])
    assert cfg.train.batch_size == 256 and cfg.model.drop_rate == 0.3
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.data.train == ["a/*.tfrecord"]
    assert cfg.model.feature_dims == {"rgb": 2048, "audio": 128}
    assert cfg.model.cluster_nums == {"rgb": 8, "audio": 4}


def test_unknown_override_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train.batchsize'.*did you mean 'train.batch_size'"):
        load_config(None, ["train.batchsize=3"])


def test_unknown_yaml_key_suggests_closest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  num_clases: 5\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'model.num_clases'.*'model.num_classes'"):
        load_config(p)


@pytest.mark.parametrize("override, match", [
    ("train.batch_size=abc", "train.batch_size: expected an integer"),
    ("train.batch_size=0", "train.batch_size: must be > 0"),
    ("model.drop_rate=1.5", r"model.drop_rate: must be in \[0, 1\)"),
    ("train.loss=mse", "train.loss: must be one of"),
    ("train.precision=fp8", "train.precision: must be one of"),
    ("model.cluster_nums={rgb: 4}", "model.cluster_nums: has no entry for modalities \\['audio'\\]"),
    ("data.num_workers=-1", "data.num_workers: must be >= 0"),
    ("train.compile=maybe", "train.compile: expected true or false"),
])
def test_bad_values_are_one_line_errors(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.seed=7", "model.num_classes=11"])
    p = tmp_path / "resolved.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg
