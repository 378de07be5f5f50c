"""strategy.partition-owners: a partition's claim by any identity the owners file does not list
is refused, so Sybil node ids cannot keep its owner out; the file is parsed strictly and read
as the server's own; ``cola-fed node-id`` prints what the file lists."""

from __future__ import annotations

import os

import pytest
from federation_runs import DIGITS
from flwr.app import MessageType

from cola_fed.cli import main as cli_main
from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.node_store import NodeStore
from cola_fed.federation.owners import parse_partition_owners, read_partition_owners
from cola_fed.federation.server import build_strategy
from cola_fed.wire.crypto import fingerprint, public_bytes

pytest.importorskip("sklearn")

ROUNDS = 3
FP = ":".join(["ab12"] * 16)


def identity_of(folder) -> str:
    return fingerprint(public_bytes(NodeStore(folder).identity()))


def owners_file(tmp_path, lines: list[str]):
    folder = tmp_path / "server"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "partition-owners"
    path.write_text("# partition fingerprint comment\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------------------------
# the file


def test_the_format_is_authorized_keys_like():
    text = (f"# owners\n\n0 {FP} alice's laptop\n  1\t{FP.replace(':', '').upper()}\n"
            f"1 {'cd34' * 16}   # a second identity for partition 1\r\n")
    owners = parse_partition_owners(text.encode())
    assert owners == {0: {FP}, 1: {FP, ":".join(["cd34"] * 16)}}


@pytest.mark.parametrize(("line", "error"), [
    ("0", "line 3: no fingerprint"),
    (f"-1 {FP}", "line 3: the partition id '-1' is not a whole number"),
    (f"01 {FP}", "is not a whole number"),
    (f"x {FP}", "is not a whole number"),
    (f"{2**31} {FP}", "is above 2147483647"),
    ("0 ab12ab12", "line 3: 'ab12ab12' is not a fingerprint"),
    (f"0 {FP[:-1]}g", "is not a fingerprint"),
    (f"0 :{FP}", "is not a fingerprint"),
    (f"0 {FP}\n0 {FP.replace(':', '')}", "line 4: partition 0 lists"),
    (f"0 {FP}\x00", "line 3: a control character"),
])
def test_a_bad_line_is_named_with_its_number(line, error):
    with pytest.raises(ConfigError, match="expected '<partition-id> <fingerprint>") as err:
        parse_partition_owners(f"# header\n\n{line}\n".encode(), "owners.txt")
    assert error in str(err.value) and "owners.txt" in str(err.value)


def test_the_file_is_read_as_the_servers_own(tmp_path):
    path = owners_file(tmp_path, [f"0 {FP}"])
    assert read_partition_owners(path).owners == {0: {FP}}
    path.chmod(0o620)
    with pytest.raises(ConfigError, match=r"writable by group or others .* chmod go-w"):
        read_partition_owners(path)
    path.chmod(0o644)  # readable by others is fine: it holds public fingerprints
    read_partition_owners(path)
    path.parent.chmod(0o777)
    with pytest.raises(ConfigError, match=r"folder .* is writable by group or others"):
        read_partition_owners(path)
    path.parent.chmod(0o1777)  # sticky: nobody else can replace the file
    read_partition_owners(path)
    path.parent.chmod(0o700)
    link = path.with_name("link")
    os.symlink(path, link)
    with pytest.raises(ConfigError, match="symbolic link"):
        read_partition_owners(link)
    with pytest.raises(ConfigError, match="does not exist"):
        read_partition_owners(path.with_name("missing"))
    (path.parent / "dir").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        read_partition_owners(path.parent / "dir")
    path.write_bytes(b"0 \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_partition_owners(path)
    path.write_bytes(b"#" * (2**20 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        read_partition_owners(path)


def test_a_missing_or_bad_file_stops_the_run_before_it_begins(tmp_path):
    config = RunConfig.from_flat({**DIGITS, "edge.graphs": False,
                                  "strategy.partition-owners": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match=r"strategy.partition-owners: .* does not exist"):
        build_strategy(config)


def test_node_id_prints_the_fingerprint_the_node_claims_with(tmp_path, capsys):
    folder = tmp_path / "node"
    assert cli_main(["node-id", "--state-dir", str(folder)]) == 1
    assert "pass --create" in capsys.readouterr().err and not folder.exists()
    assert cli_main(["node-id", "--state-dir", str(folder), "--create"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == identity_of(folder)  # the key the node signs its claims with
    assert cli_main(["node-id", "--state-dir", str(folder), "--partition", "4"]) == 0
    assert capsys.readouterr().out == f"4 {printed}\n"
    assert parse_partition_owners(f"4 {printed}".encode()) == {4: {printed}}


# --------------------------------------------------------------------------------------------
# claims


def grid_with_state(tmp_path, *, owner_late: bool, sybils: list[int]):
    """Nodes 1000-1002 hold partitions 0-2 with identities in state dirs; ``sybils`` are node
    ids that claim partition 0 with identities of their own. With ``owner_late``, partition
    0's owner (node 1000) connects only after round 1, when a Sybil may hold it."""
    grid = LocalGrid(3)
    folders = {n: tmp_path / f"node-{n}" for n in (1000, 1001, 1002, *sybils)}
    for node, context in grid.contexts.items():
        context.node_config["state-dir"] = str(folders[node])
    for node in sybils:
        grid.connect(node, 0, 3, **{"state-dir": str(folders[node])})
    fingerprints = {n: identity_of(f) for n, f in folders.items()}
    if owner_late:
        owner = grid.disconnect(1000)
        trained = []

        def late(node, msg):
            if msg.metadata.message_type == MessageType.TRAIN:
                trained.append(node)
                if len(trained) == 2:  # round 1 is under way: the owner comes now
                    grid.contexts[1000] = owner
            return msg

        grid.message_filter = late
    return grid, fingerprints


def run_on(grid, overrides):
    config = RunConfig.from_flat({**DIGITS, "edge.graphs": False, "num-server-rounds": ROUNDS,
                                  **overrides})
    strategy = build_strategy(config)
    strategy.start(grid, num_rounds=ROUNDS, timeout=3)
    return strategy


@pytest.mark.parametrize("owner_late", [True, False], ids=["sybil-first", "all-at-once"])
def test_sybils_cannot_take_an_owned_partition(tmp_path, owner_late, caplog):
    sybils = [5000] if owner_late else [5000, 5001, 5002]
    grid, fps = grid_with_state(tmp_path, owner_late=owner_late, sybils=sybils)
    path = owners_file(tmp_path, [f"{p} {fps[1000 + p]}" for p in range(3)])
    strategy = run_on(grid, {"strategy.partition-owners": str(path)})
    assert strategy.members[0].node_id == 1000 and strategy.members[0].identity.hex() != ""
    assert fingerprint(strategy.members[0].identity) == fps[1000]
    assert strategy.members[0].rounds_trained == (ROUNDS - 1 if owner_late else ROUNDS)
    assert all(strategy.members[p].rounds_trained == ROUNDS for p in (1, 2))
    for sybil in sybils:
        assert sybil not in strategy.sessions and sybil in strategy._excluded
        assert "owned by other node identities" in strategy.refused_at_hello[sybil]
        assert fps[sybil] in strategy.refused_at_hello[sybil]
    assert 1000 not in strategy.refused_at_hello


def test_without_the_file_the_first_claim_wins(tmp_path):
    """Today's behaviour, and what the file is for: a Sybil that claims the partition first
    keeps its owner out for the run."""
    grid, _ = grid_with_state(tmp_path, owner_late=True, sybils=[5000])
    strategy = run_on(grid, {})
    assert strategy.members[0].node_id == 5000
    assert "held by another node identity" in strategy.refused_at_hello[1000]


def test_a_partition_the_file_does_not_list_is_refused(tmp_path):
    grid, fps = grid_with_state(tmp_path, owner_late=False, sybils=[])
    # partition 2 unlisted; node 1001's identity listed, but for partition 0
    path = owners_file(tmp_path, [f"0 {fps[1000]}", f"1 {fps[1000]}", f"0 {fps[1001]}"])
    strategy = run_on(grid, {"strategy.partition-owners": str(path)})
    assert set(strategy.members) == {0}
    assert "partition 2 is not listed" in strategy.refused_at_hello[1002]
    assert "owned by other node identities" in strategy.refused_at_hello[1001]


def test_a_resumed_session_of_an_identity_no_longer_listed_is_dropped(tmp_path):
    from federation_runs import run_with_state

    out = tmp_path / "run"
    strategy, grid = run_with_state(out, 11, 2, 2)
    assert set(strategy.members) == {0, 1}
    fps = {p: identity_of(out / "node-state" / f"partition-{p}") for p in (0, 1)}
    new_owner = tmp_path / "new-owner"
    path = owners_file(tmp_path, [f"0 {fps[0]}", f"1 {identity_of(new_owner)}"])
    grid = LocalGrid(2, run_id=11)
    for i, context in enumerate(grid.contexts.values()):
        context.node_config["state-dir"] = str(out / "node-state" / f"partition-{i}")
    grid.contexts[1001].node_config["state-dir"] = str(new_owner)  # partition 1's new owner
    from cola_fed.federation.server import run_server

    resumed = run_server(grid, {**DIGITS, "num-server-rounds": 4, "output-dir": str(out),
                                "checkpoint.resume": True, "strategy.timeout": 30.0,
                                "strategy.partition-owners": str(path)})
    assert resumed.stopped is None
    assert fingerprint(resumed.members[1].identity) == identity_of(new_owner)
    assert resumed.members[1].rounds_trained == 2  # afresh: rounds 3 and 4
    assert resumed.members[0].rounds_trained == 4  # the owner's session went on
