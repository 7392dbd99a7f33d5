import io
import pickle
import struct

import numpy as np
import pytest

from attncluster.data.pickles import PickleShard
from attncluster.data.records import ReadStats
from attncluster.errors import DataError


class Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 ``str`` (SHORT_BINSTRING / BINSTRING): what tf2pkl.py under
    Python 2 produced, keys, ids and numpy's dtype strings alike."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def py2_dumps(obj) -> bytes:
    f = io.BytesIO()
    Py2Pickler(f, protocol=2).dump(obj)
    # Python 2's numpy lived in numpy.core (numpy 2 writes numpy._core).
    return f.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_records(n=3, T=10, nframes=None, key=str):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        out.append({
            key("video"): key(f"v{i:03d}"),
            key("feature"): rng.integers(0, 256, (T + i, 1024), dtype=np.uint8),
            key("audio"): rng.integers(0, 256, (T + i, 128), dtype=np.uint8),
            key("label"): [i, i + 2],
            key("nframes"): T + i if nframes is None else nframes,
        })
    return out


def to_bytes(s):
    return s.encode()


def write(tmp_path, data: bytes, name="shard.pkl"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def check_records(shard, records, key=str):
    assert len(shard) == len(records)
    for i, rec in enumerate(records):
        v = shard.read(i)
        n = rec[key("nframes")]
        assert v.id == f"v{i:03d}" and isinstance(v.id, str)
        assert v.features["rgb"].dtype == np.uint8 and v.features["rgb"].shape == (n, 1024)
        np.testing.assert_array_equal(v.features["rgb"], rec[key("feature")][:n])
        np.testing.assert_array_equal(v.features["audio"], rec[key("audio")][:n])
        assert v.labels.dtype == np.int64 and v.labels.tolist() == rec[key("label")]


def test_str_keys_python3_pickle(tmp_path):
    records = make_records()
    path = write(tmp_path, pickle.dumps(records))
    check_records(PickleShard(path), records)


def test_bytes_keys_protocol2_pickle(tmp_path):
    records = make_records(key=to_bytes)
    path = write(tmp_path, pickle.dumps(records, protocol=2))
    check_records(PickleShard(path, num_classes=10), records, key=to_bytes)


def test_python2_style_pickle(tmp_path):
    records = make_records()
    data = py2_dumps(records)
    assert b"cnumpy.core.multiarray\n_reconstruct" in data
    path = write(tmp_path, data)
    check_records(PickleShard(path), records)


def test_truncation_to_nframes_max_frames_and_shortest_modality(tmp_path):
    rec = make_records(n=1, T=10, nframes=6)[0]
    path = write(tmp_path, pickle.dumps([rec]))
    assert PickleShard(path).read(0).features["rgb"].shape == (6, 1024)
    assert PickleShard(path, max_frames=4).read(0).num_frames == 4
    rec["audio"] = rec["audio"][:5]
    path = write(tmp_path, pickle.dumps([rec]))
    v = PickleShard(path).read(0)
    assert v.features["rgb"].shape == (5, 1024) and v.features["audio"].shape == (5, 128)


def test_float_features_and_modality_subset(tmp_path):
    rec = make_records(n=1)[0]
    rec["feature"] = np.linspace(-1, 1, 10 * 1024).reshape(10, 1024)  # float64
    path = write(tmp_path, pickle.dumps([rec]))
    v = PickleShard(path, modalities={"rgb": 1024}).read(0)
    assert list(v.features) == ["rgb"] and v.features["rgb"].dtype == np.float32
    np.testing.assert_allclose(v.features["rgb"], rec["feature"], rtol=1e-7)


def test_iteration_and_stats(tmp_path):
    records = make_records(n=4, T=5)
    path = write(tmp_path, pickle.dumps(records))
    stats = ReadStats()
    ids = [v.id for v in PickleShard(path, stats=stats)]
    assert ids == ["v000", "v001", "v002", "v003"]
    assert (stats.files, stats.videos, stats.frames, stats.corrupt) == (1, 4, 5 + 6 + 7 + 8, 0)


@pytest.mark.parametrize("data,needle", [
    (b"this is not a pickle", "not a readable pickle"),
    (pickle.dumps({"video": "x"}), "expected a pickled list of dicts"),
    (b"", "not a readable pickle"),
])
def test_file_level_errors(tmp_path, data, needle):
    path = write(tmp_path, data)
    with pytest.raises(DataError, match=needle) as e:
        PickleShard(path, skip_corrupt=True)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        PickleShard(str(tmp_path / "nope.pkl"))


class Evil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_refuses_code(tmp_path):
    path = write(tmp_path, pickle.dumps([{"video": Evil()}]))
    with pytest.raises(DataError, match=r"builtins\.eval, which is not allowed"):
        PickleShard(path)


def _bad(mutate):
    records = make_records(n=3)
    mutate(records[1])
    return records


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r.pop("nframes"), "missing key 'nframes'"),
    (lambda r: r.pop("audio"), "missing key 'audio'"),
    (lambda r: r.update(feature=r["feature"][:, :512]),
     "'feature' \\(rgb\\) has 512 features per frame, expected 1024"),
    (lambda r: r.update(audio=r["audio"][:, 0]), "'audio' \\(audio\\) must be a 2-D array"),
    (lambda r: r.update(audio=r["audio"].astype(np.int32)), "dtype int32, expected uint8"),
    (lambda r: r.update(label=[1, 7]), "label 7 out of range, expected \\[0, 5\\)"),
    (lambda r: r.update(label=[-1]), "label -1 out of range"),
    (lambda r: r.update(label=["a"]), "'label' must be a list of int class ids"),
    (lambda r: r.update(nframes=-3), "'nframes' must be a non-negative int"),
    (lambda r: r.update(video=5), "'video' must be a str or bytes id"),
])
def test_record_errors_and_skip_corrupt(tmp_path, mutate, needle):
    path = write(tmp_path, pickle.dumps(_bad(mutate)))
    shard = PickleShard(path, num_classes=5)
    shard.read(0)
    with pytest.raises(DataError, match=needle) as e:
        shard.read(1)
    assert str(e.value).startswith(f"{path}: record 1") and "\n" not in str(e.value)

    stats = ReadStats()
    shard = PickleShard(path, num_classes=5, skip_corrupt=True, stats=stats)
    assert shard.read(1) is None and stats.corrupt == 1
    assert [v.id for v in shard] == ["v000", "v002"]
    assert stats.corrupt == 2 and stats.videos == 2


def test_record_not_a_dict(tmp_path):
    path = write(tmp_path, pickle.dumps([make_records(1)[0], [1, 2]]))
    with pytest.raises(DataError, match=r"record 1: expected a dict, got list"):
        PickleShard(path).read(1)
