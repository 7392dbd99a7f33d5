"""data/paths.py: shard specs (files, globs, directories, list files) to file lists, and list-file errors."""

from __future__ import annotations

import pytest

from attncluster.data.paths import expand_paths
from attncluster.errors import DataError


@pytest.fixture
def shards(tmp_path):
    for name in ["a0.tfrecord", "a1.tfrecord", "b0.tfrecord"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c0.tfrecord").write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize("suffix", [".list", ".txt"])
def test_list_files_name_paths_globs_and_directories_relative_to_the_list(shards, suffix):
    lst = shards / f"train{suffix}"
    lst.write_text("# the reference's train.list layout\nb0.tfrecord\n\na*.tfrecord\nsub\n")
    assert expand_paths([str(lst)]) == [str(shards / n) for n in ["b0.tfrecord", "a0.tfrecord", "a1.tfrecord"]] + [
        str(shards / "sub" / "c0.tfrecord")]


def test_a_list_line_that_matches_nothing_names_the_list_file_and_line(shards):
    lst = shards / "train.list"
    lst.write_text("a0.tfrecord\n# comment\nmissing\x1b[2J\x00.tfrecord\n")
    with pytest.raises(DataError) as e:
        expand_paths([str(lst)])
    msg = str(e.value)
    assert msg.startswith(f"{lst}: line 3: ") and "matches no files" in msg
    # The escape and NUL bytes are shown escaped, never sent to the terminal (and NUL is no crash).
    assert "\x1b" not in msg and "\\x1b" in msg and "\x00" not in msg and "\\x00" in msg


def test_a_list_that_names_itself_is_an_error_not_a_hang(shards):
    lst = shards / "loop.list"
    lst.write_text("loop.list\n")
    with pytest.raises(DataError, match="nest more than 8 deep"):
        expand_paths([str(lst)])


def test_directories_skip_lists_csvs_and_hidden_files(shards):
    (shards / "labels.csv").write_text("x")
    (shards / "train.list").write_text("a0.tfrecord\n")
    (shards / ".a2.tfrecord.tmp").write_bytes(b"x")
    assert expand_paths([str(shards)]) == [str(shards / n) for n in ["a0.tfrecord", "a1.tfrecord", "b0.tfrecord"]]


def test_a_spec_that_matches_nothing_says_what_was_expected(tmp_path):
    with pytest.raises(DataError, match=r"nope\*\.tfrecord: matches no files \(train\); expected a file, glob"):
        expand_paths([str(tmp_path / "nope*.tfrecord")], what="train")


def test_an_unreachable_url_is_an_error_that_names_it():
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tfrecord"
    with pytest.raises(DataError, match=rf"^{url}: cannot reach this URL \("):
        expand_paths([url])


def test_a_shard_given_twice_is_an_error_not_counted_twice(tmp_path):
    from attncluster.data.paths import expand_paths
    from attncluster.errors import DataError

    (tmp_path / "a.tfrecord").write_bytes(b"")
    (tmp_path / "b.tfrecord").write_bytes(b"")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "link.tfrecord").symlink_to(tmp_path / "a.tfrecord")
    assert expand_paths([str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]) == [
        str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]
    for specs in ([str(tmp_path / "a.tfrecord")] * 2,                                  # the same path twice
                  [str(tmp_path), str(tmp_path / "b.tfrecord")],                        # a folder and a file in it
                  [str(tmp_path / "a.tfrecord"), str(tmp_path / "other")]):              # a link to a file given
        with pytest.raises(DataError, match="given twice"):
            expand_paths(specs)
