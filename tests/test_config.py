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
    ("data.num_workers=-1", "data.num_workers: must be in \\[0, 256\\] or 'auto'"),
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


# ---------------------------------------------------------------------------------------------- fuzzer findings
@pytest.mark.parametrize("override, match", [
    ("model.feature_dims.rgb.x=5", r"'model.feature_dims.rgb' is a value, not a mapping"),
    ("train.seed=99999999999999999999999999", r"train.seed: must be in \[0, 9_223_372_036_854_775_807\]"),
    ("train.seed=-1", r"train.seed: must be in \[0, "),
    ("train.learning_rate=.inf", r"train.learning_rate: must be a finite number in \(0, 10\]"),
    ("train.learning_rate=.nan", r"train.learning_rate: must be > 0"),
    ("train.learning_rate=" + "9" * 400, r"train.learning_rate: expected a number, got an integer of 1329 bits"),
    ("train.grad_clip=.inf", r"train.grad_clip: must be a finite number"),
    ("model.hidden_sizes=[100000, 100000]", r"model.hidden_sizes: sizes must be in \[1, 65_536\]"),
    ("model.hidden_sizes=[60000, 60000]", r"model: 6_043_720_918 parameters is more than the 1_000_000_000 allowed"),
    ("model.seg_num=100000000", r"model.seg_num: must be in \[1, 10_000\]"),
    ("train.num_threads=100000", r"train.num_threads: must be in \[0, 256\]"),
    ("data.num_workers=100000", r"data.num_workers: must be in \[0, 256\]"),
    ("train.batch_size=100000000", r"train.batch_size: must be in \[1, 1_048_576\]"),
    ("eval.batch_size=1000000", r"eval.batch_size: a batch of 1000000 videos x model.seg_num 100"),
    ("model.feature_dims={a.b: 3}", r"model.feature_dims.a.b: a modality name must be"),
    ("train.epochs=" + "1" * 5000, r"train.epochs: expected an integer"),  # too long for int(): YAML leaves a string
], ids=lambda v: v[:40])
def test_fuzzer_findings_are_one_line_errors_naming_the_override(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600
    assert msg.startswith("-o ") or msg.startswith("override"), msg


def test_the_model_parameter_bound_matches_a_real_model():
    from attncluster.model import AttentionCluster, count_parameters

    for overrides in (["model.cluster_nums=2", "model.hidden_sizes=[16]"],
                      ["model.cluster_nums={rgb: 3, audio: 2}", "model.hidden_sizes=[7, 5]", "model.num_classes=9"]):
        cfg = load_config(None, overrides)
        assert cfg.model.num_parameters() == count_parameters(AttentionCluster(**cfg.model.model_kwargs()))
    assert load_config(None).model.num_parameters() == 57_807_830  # the README's figure for the reference model


def test_non_utf8_and_oversized_yaml(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("train:\n  seed: 3  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 23 is 0xe9\)"):
        load_config(p)
    p = tmp_path / "inf.yaml"
    p.write_text("train:\n  learning_rate: .inf\n")
    with pytest.raises(ConfigError, match=r"inf.yaml: train.learning_rate: must be a finite number"):
        load_config(p)
    p = tmp_path / "bigint.yaml"
    p.write_text("train:\n  seed: " + "7" * 5000 + "\n")
    with pytest.raises(ConfigError, match="bigint.yaml"):
        load_config(p)


def test_errors_blame_the_override_or_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  batch_size: 0\n  seed: 1\n")
    with pytest.raises(ConfigError) as e:  # the file's own bad value: the file is named
        load_config(p)
    assert str(e.value).startswith(f"{p}: train.batch_size: must be > 0")
    p.write_text("train:\n  batch_size: 8\n")
    with pytest.raises(ConfigError) as e:  # the value came from -o: the file is not blamed
        load_config(p, ["train.seed=-3"])
    assert str(e.value).startswith("-o train.seed=-3: train.seed: must be in") and str(p) not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(p, ["model.feature_dims.rgb=0"])
    assert str(e.value).startswith("-o model.feature_dims.rgb=0: model.feature_dims.rgb: must be in [1, 65_536]")


def test_a_yaml_list_override_with_globs_stays_a_list():
    # quoted items: plain YAML
    assert load_config(None, ['data.train=["validate001[0-5].tfrecord", "b*.tfrecord"]']).data.train == [
        "validate001[0-5].tfrecord", "b*.tfrecord"]
    # unquoted items that YAML cannot parse ([0-5] nests a flow list, * starts an alias): split, not one string
    assert load_config(None, ["data.train=[validate001[0-5].tfrecord, a*.tfrecord]"]).data.train == [
        "validate001[0-5].tfrecord", "a*.tfrecord"]
    assert load_config(None, ["data.valid=[*.tfrecord]"]).data.valid == ["*.tfrecord"]
    assert load_config(None, ["data.train=validate001[0-5].tfrecord"]).data.train == ["validate001[0-5].tfrecord"]
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, ["model.cluster_nums={rgb: [1"])


def test_random_overrides_never_crash(capsys, tmp_path):
    """A small fuzzer: random keys with hostile values either load within the bounds or raise one ConfigError line,
    which the CLI prints as one ``error:`` line with exit status 2."""
    import dataclasses
    import random

    from attncluster.cli import main
    from attncluster.config import SECTIONS

    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    keys += ["model.feature_dims.rgb", "model.feature_dims.rgb.x", "model.cluster_nums.audio", "train", "x.y.z"]
    values = ["0", "-1", "1", "2", "1e400", "-.inf", ".nan", "9" * 30, "9" * 5000, "-" + "9" * 30, "1.5", "true",
              "null", "''", "[]", "{}", "[1, 2]", "[100000, 100000]", "{a: 1}", "{rgb: {x: 1}}", "[[[[1]]]]", "&a [*a]",
              "[*.tfrecord]", "'\x1b[31m'", "\u202e", "x" * 3000, "{", "[", "a: b: c", "!!python/object:os.system x",
              "2048", "100000000", "256", "257"]
    rng = random.Random(0)
    failures = 0
    for _ in range(400):
        overrides = [f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(1, 3))]
        try:
            cfg = load_config(None, overrides)
        except ConfigError as e:
            failures += 1
            assert "\n" not in str(e) and len(str(e)) < 2000, (overrides, str(e)[:200])
            if failures % 10 == 1:  # the same through the command line (the error comes before any weights are read)
                (tmp_path / "defaults.yaml").write_text("{}\n")  # the defaults, as load_config(None) uses
                argv = ["eval", "--config", str(tmp_path / "defaults.yaml"), "--weights", "none.pt"]
                code = main(argv + [x for o in overrides for x in ("-o", o)])
                err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
                assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (overrides, err)
                assert all(ch.isprintable() for ch in err[0]) and len(err[0]) < 1100
            continue
        m, t = cfg.model, cfg.train
        assert m.num_parameters() <= 1_000_000_000 and 1 <= m.seg_num <= 10_000, overrides
        assert 0 <= t.seed < 2**63 and 0 <= t.num_threads <= 256 and 0 < t.learning_rate <= 10, overrides
    assert 0 < failures < 400


def test_shipped_configs_load_by_name_from_any_folder(tmp_path, monkeypatch):
    """After a plain pip install there is no configs/ folder: the README's --config configs/NAME.yaml still works."""
    import yaml

    from attncluster.config import load_config

    monkeypatch.chdir(tmp_path)
    shipped = Path(__file__).resolve().parents[1] / "src" / "attncluster" / "configs" / "youtube8m.yaml"
    want = yaml.safe_load(shipped.read_text())["train"]["batch_size"]
    for name in ("youtube8m", "youtube8m.yaml", "configs/youtube8m.yaml"):
        assert load_config(name).train.batch_size == want
    (tmp_path / "youtube8m.yaml").write_text("train:\n  batch_size: 7\n")  # a file of the user's own wins
    assert load_config("youtube8m.yaml").train.batch_size == 7
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found \(the shipped configs, usable by name"):
        load_config("nope.yaml")
