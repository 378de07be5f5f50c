"""Issue 22, item 3: a node's own state files and folders are checked, never taken on faith.

State files carry a format version and an HMAC tag keyed from the node's identity, must be
0600, and one that fails is set aside with a warning so that the node goes on from the next
good one (or joins fresh); the state dir and the graph and file caches are this user's
folders, repaired to 0700 when open to others and refused when they are links.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest
from federation_runs import DIGITS
from flwr.app import ConfigRecord, Context, RecordDict

from cola_fed.config import RunConfig
from cola_fed.edge.cache import GraphCache, TaskFileCache
from cola_fed.edge.graphs import content_hash
from cola_fed.errors import ConfigError
from cola_fed.federation import client
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.node_store import (
    STATE_FORMAT,
    STATE_MAGIC,
    TAG_BYTES,
    NodeStore,
    StateFileError,
)
from cola_fed.federation.server import build_strategy

SERVER = bytes(range(32))


def saved(tmp_path, name="node"):
    store = NodeStore(tmp_path / name)
    path = store.save(RecordDict({"x": ConfigRecord({"a": 1})}), SERVER, 7)
    return store, path


def test_a_state_file_carries_a_format_version_and_a_tag_and_reads_back(tmp_path):
    store, path = saved(tmp_path)
    data = path.read_bytes()
    assert data.startswith(STATE_MAGIC + bytes([STATE_FORMAT]))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert store.read(path)["x"]["a"] == 1
    assert NodeStore(store.folder).load(SERVER, 7)["x"]["a"] == 1  # a restarted process


@pytest.mark.parametrize("change", ["bit", "tag", "format", "truncated", "junk"])
def test_a_changed_state_file_is_refused_and_set_aside(tmp_path, change, caplog):
    store, path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    if change == "bit":
        data[len(data) // 2] ^= 0x01
    elif change == "tag":
        data[-1] ^= 0x80
    elif change == "format":  # a newer format, even with a tag that holds
        body = bytes(data[:-TAG_BYTES])
        body = body[:len(STATE_MAGIC)] + bytes([STATE_FORMAT + 1]) + body[len(STATE_MAGIC) + 1:]
        data = bytearray(body + store._tag(body))
    elif change == "truncated":
        data = data[:10]
    else:
        data = bytearray(b"not a state file at all" * 4)
    path.write_bytes(bytes(data))
    with pytest.raises(StateFileError):
        store.read(path)
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        assert store.load(SERVER, 7) is None
    assert "set aside" in caplog.text
    assert not path.exists()
    assert next(p.name for p in store.folder.glob("*.refused")).startswith(path.name)


def test_a_state_file_of_another_node_identity_is_refused(tmp_path):
    _, path = saved(tmp_path, "a")
    other, _ = saved(tmp_path, "b")  # another identity in another state dir
    target = other.folder / path.name
    shutil.copyfile(path, target)
    os.chmod(target, 0o600)
    with pytest.raises(StateFileError, match="tag does not verify"):
        other.read(target)


def test_a_state_file_others_may_read_is_refused(tmp_path):
    store, path = saved(tmp_path)
    os.chmod(path, 0o644)
    with pytest.raises(StateFileError, match="0600"):
        store.read(path)
    assert store.load(SERVER, 7) is None and not path.exists()


def test_only_the_run_files_a_node_writes_are_listed(tmp_path):
    store, path = saved(tmp_path)
    (store.folder / "run-x.state").write_bytes(b"x")
    (store.folder / "run-0123456789abcdef-1.state.bak").write_bytes(b"x")
    os.symlink(path, store.folder / "run-0123456789abcdef-2.state")
    assert store.files() == [path]


def test_a_junk_state_file_does_not_block_the_restore_of_the_good_one(tmp_path, caplog):
    """A restarted node finds a newer junk ``run-*.state`` (another run's, damaged) next to
    its good one: the junk is set aside with a warning and the good session is restored."""
    folder = tmp_path / "node"
    grid = LocalGrid(1)
    grid.contexts[1000].node_config["state-dir"] = str(folder)
    build_strategy(RunConfig.from_flat({**DIGITS, "num-server-rounds": 1})).start(
        grid, num_rounds=1, timeout=3)
    (good,) = NodeStore(folder).files()
    junk = folder / "run-ffffffffffffffff-1.state"
    junk.write_bytes(good.read_bytes()[:-1] + b"\x00")  # a valid-looking file, one byte off
    os.chmod(junk, 0o600)
    os.utime(junk, (good.stat().st_mtime + 10,) * 2)  # newest: tried first
    assert NodeStore(folder).files()[0] == junk
    restarted = Context(grid.run_id, 1000, dict(grid.contexts[1000].node_config),
                        RecordDict(), {})
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        assert client._restore(restarted, NodeStore(folder))
    assert client.STATE_SESSION in restarted.state
    assert "set aside" in caplog.text and not junk.exists()
    assert len(list(folder.glob("run-ffffffffffffffff-1.state.*.refused"))) == 1

    good.write_bytes(good.read_bytes()[:-1] + bytes([good.read_bytes()[-1] ^ 1]))
    again = Context(grid.run_id, 1000, dict(grid.contexts[1000].node_config), RecordDict(), {})
    assert not client._restore(again, NodeStore(folder))  # then it has no session: joins anew
    assert not again.state


def test_a_state_dir_open_to_others_is_repaired_and_a_link_refused(tmp_path, caplog):
    store, path = saved(tmp_path)
    os.chmod(store.folder, 0o777)
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        assert store.read(path)["x"]["a"] == 1
    assert store.folder.stat().st_mode & 0o777 == 0o700
    assert "made it 0700" in caplog.text
    link = tmp_path / "link"
    link.symlink_to(store.folder)
    with pytest.raises(ConfigError, match="symbolic link"):
        NodeStore(link).files()


def test_a_world_writable_graph_cache_is_repaired_before_anything_in_it_is_used(tmp_path,
                                                                                 caplog):
    folder = tmp_path / "graphs"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)  # a pre-existing folder anyone may write into
    cache = TaskFileCache(folder)
    data = b'{"planted": true}'
    digest = content_hash(data)
    (folder / digest).write_bytes(data)  # planted by someone else, hash-correct
    with caplog.at_level(logging.WARNING, logger="cola_fed"):
        cache.has("tokenizer.json", digest)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert "made it 0700" in caplog.text


def test_a_cache_never_reads_through_a_link(tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"graph")
    digest = content_hash(b"graph")
    cache = GraphCache(tmp_path / "graphs")
    cache.directory.mkdir(mode=0o700)
    (cache.directory / f"{digest}.onnx").symlink_to(outside)
    assert not cache.has("g", digest)  # the link is not taken (and is removed)
    assert not (cache.directory / f"{digest}.onnx").is_symlink()
    link = tmp_path / "linked"
    link.symlink_to(cache.directory)
    with pytest.raises(ConfigError, match="symbolic link"):
        GraphCache(link).has("g", digest)
