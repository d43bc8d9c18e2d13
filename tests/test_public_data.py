import io
import os
import pathlib
import tarfile
import urllib.error

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tffpipe.tasks import public_data
from tffpipe import tasks


def _no_download(*args):
    raise AssertionError(f"tried to download {args}")


def test_a_present_file_is_used_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(public_data.tff_download, "_fetch_lzma_file", _no_download)
    (tmp_path / "emnist_all.sqlite").write_bytes(b"x")
    assert public_data.dataset_file(str(tmp_path), "emnist_all.sqlite", "emnist_all.sqlite.lzma") == str(
        tmp_path / "emnist_all.sqlite"
    )


def test_a_missing_file_offline_is_one_line_naming_it_and_where_to_get_it(tmp_path, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(public_data.tff_download, "_fetch_lzma_file", offline)
    with pytest.raises(tasks.TaskError) as info:
        public_data.dataset_file(str(tmp_path), "shakespeare.sqlite", "shakespeare.sqlite.lzma")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"dataset file {tmp_path}/shakespeare.sqlite is missing and downloading it failed")
    assert "download https://storage.googleapis.com/tff-datasets-public/shakespeare.sqlite.lzma" in message
    assert "--data_dir=FOLDER holding shakespeare.sqlite" in message


def test_an_interrupted_download_leaves_no_file_behind(tmp_path, monkeypatch):
    def cut_off(url, dest):
        with open(dest, "wb") as f:
            f.write(b"half a database")
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(public_data.tff_download, "_fetch_lzma_file", cut_off)
    with pytest.raises(tasks.TaskError, match="Connection reset by peer"):
        public_data.dataset_file(str(tmp_path), "cifar100.sqlite", "cifar100.sqlite.lzma")
    assert os.listdir(tmp_path) == []  # neither the file nor a partial one


def test_a_file_inside_a_tar_archive_is_extracted(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    content = b"the 100\nof 90\n"
    with tarfile.open(served / "stackoverflow.word_count.tar.bz2", "w:bz2") as tar:
        info = tarfile.TarInfo("stackoverflow.word_count")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    monkeypatch.setattr(public_data, "BASE_URL", f"file://{served}/")
    data_dir = tmp_path / "data"
    path = public_data.dataset_file(str(data_dir), "stackoverflow.word_count", "stackoverflow.word_count.tar.bz2")
    assert pathlib.Path(path).read_bytes() == content
    assert os.listdir(data_dir) == ["stackoverflow.word_count"]


def test_written_sql_client_data_reads_back_with_a_client_in_two_splits(tmp_path):
    path = str(tmp_path / "db.sqlite")
    public_data.write_sql_client_data(
        path,
        {
            "train": {"a": {"v": np.arange(3, dtype=np.int64)}, "b": {"v": np.array([7], np.int64)}},
            "test": {"a": {"v": np.array([9], np.int64)}},
        },
    )
    spec = {"v": tf.TensorSpec([], tf.int64)}
    train = tff.simulation.datasets.load_and_parse_sql_client_data(path, spec, split_name="train")
    test = tff.simulation.datasets.load_and_parse_sql_client_data(path, spec, split_name="test")
    assert sorted(train.client_ids) == ["a", "b"] and test.client_ids == ["a"]
    assert sorted(int(e["v"]) for e in train.create_tf_dataset_for_client("a")) == [0, 1, 2]
    assert [int(e["v"]) for e in test.create_tf_dataset_for_client("a")] == [9]


def _plan(path: str) -> str:
    import sqlite3

    with sqlite3.connect(path) as db:
        query = "SELECT serialized_example_proto FROM examples WHERE client_id = 'a' and split_name ='train'"
        return str(db.execute("EXPLAIN QUERY PLAN " + query).fetchall())


def test_a_clients_examples_are_read_through_an_index_in_the_files_order(tmp_path, capsys):
    # TFF's files have no index: every client read scanned the whole file.
    values = np.arange(40, dtype=np.int64)
    path = str(tmp_path / "emnist_all.sqlite")
    public_data.write_sql_client_data(path, {"train": {"a": {"v": values[::2]}, "b": {"v": values[1::2]}}})
    assert "USING INDEX tffpipe_examples_by_client" in _plan(path)
    spec = {"v": tf.TensorSpec([], tf.int64)}
    train = tff.simulation.datasets.load_and_parse_sql_client_data(path, spec, split_name="train")
    assert [int(e["v"]) for e in train.create_tf_dataset_for_client("a")] == list(values[::2])
    # A file without the index (as TFF publishes them) gets it when a task asks for it.
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX tffpipe_examples_by_client")
    assert "SCAN examples" in _plan(path)
    assert public_data.dataset_file(str(tmp_path), "emnist_all.sqlite", "unused.lzma") == path
    assert "USING INDEX" in _plan(path)
    assert [int(e["v"]) for e in train.create_tf_dataset_for_client("a")] == list(values[::2])


def test_a_file_that_cannot_take_the_index_is_read_as_it_is_with_a_warning(tmp_path, capsys, monkeypatch):
    import sqlite3

    path = str(tmp_path / "emnist_all.sqlite")
    public_data.write_sql_client_data(path, {"train": {"a": {"v": np.arange(3, dtype=np.int64)}}})
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX tffpipe_examples_by_client")
    real = sqlite3.connect
    # A file this process may only read (root may write any file, so chmod would not do).
    monkeypatch.setattr(
        public_data.sqlite3, "connect", lambda p, timeout=5.0: real(f"file:{p}?mode=ro", uri=True, timeout=timeout)
    )
    assert public_data.dataset_file(str(tmp_path), "emnist_all.sqlite", "unused.lzma") == path
    (line,) = capsys.readouterr().out.splitlines()
    assert line == (
        f"warning: {path} has no index by client and cannot be given one (attempt to write a "
        "readonly database); every client read scans the whole file"
    )
    assert "SCAN examples" in _plan(path)
