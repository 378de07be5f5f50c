"""The server's passes on a Ray pool give every node the payload the local engine gives it, bit
for bit, whatever the number of workers, a worker killed mid-round, or a node that leaves a
``col`` round (real Ray, real digits model; CPU).

CPU matrix products depend on the number of threads, so the local engine here runs with the
one thread each worker has (``server.cpus-per-worker = 1``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from federation_runs import DIGITS

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError
from cola_fed.federation.local_grid import LocalGrid
from cola_fed.federation.passes import GroupJob, LocalPool, round_results
from cola_fed.federation.server import build_strategy
from cola_fed.tasks.registry import TASK_DIRS_ENV

ray = pytest.importorskip("ray")
pytest.importorskip("sklearn")

MODES = ("unmerged", "merged", "col")
#: small groups, so that a round has several (the digits batches are 16 samples)
SETTINGS = {**DIGITS, "strategy.max-server-batch": 32, "checkpoint.every": 0,
            "server.cpus-per-worker": 1.0}
#: the test tasks' folder: the actors of the module's Ray find ``crashing_digits`` there
PLUGINS = Path(__file__).parent / "plugins"


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_run_on_two_ray_workers_ends_with_the_local_runs_adapters(trained):
    """A whole run (hello, a ``col`` round, evaluation) over the in-process grid on a Ray pool
    with a Ray of its own, started for the run and stopped after it, ends where the local
    engine's run (``trained``) ends. (First in the file: the other tests share one Ray, started
    later.)"""
    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    config = replace(trained.config, server=replace(trained.config.server, engine="ray",
                                                    workers=2))
    strategy = build_strategy(config)
    try:
        with one_thread():
            strategy.start(LocalGrid(5), num_rounds=1, timeout=60)
    finally:
        strategy.pool.close()
    assert not ray.is_initialized()  # the pool's own Ray is gone
    assert strategy.stopped is None and strategy.last_round == 1
    assert strategy.rounds[1]["nodes"] == 5
    for partition, session in trained.members.items():
        for layer, params in session.adapters.items():
            for name, value in params.items():
                np.testing.assert_array_equal(
                    strategy.members[partition].adapters[layer][name], value)


@pytest.fixture(scope="module")
def trained():
    """A strategy after one local ``col`` round on 5 nodes: trained adapters, next batches."""
    config = RunConfig.from_flat({**SETTINGS, "strategy.mode": "col", "num-server-rounds": 1})
    strategy = build_strategy(config)
    with one_thread():
        strategy.start(LocalGrid(5), num_rounds=1, timeout=30)
    assert strategy.last_round == 1 and strategy.stopped is None
    return strategy


@pytest.fixture(scope="module")
def shared_ray():
    """One Ray for the module's pools (each joins it), in a short temp folder of its own."""
    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    folder = tempfile.mkdtemp(prefix="cola-rt-", dir="/tmp")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, _temp_dir=folder,
             runtime_env={"env_vars": {TASK_DIRS_ENV: str(PLUGINS)}})
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def jobs_of(strategy, mode: str) -> list[GroupJob]:
    """The round's groups as configure_train forms them."""
    sessions = sorted(strategy.sessions.values(), key=lambda s: s.partition_id)
    return [GroupJob(index=i, nodes=tuple(strategy._in_wire_form(s) for s in group), mode=mode,
                     wire_dtype=strategy.plan.wire_dtype)
            for i, group in enumerate(strategy._groups(sessions))]


def payloads(pool, strategy, jobs, mode: str) -> dict[str, dict[str, bytes]]:
    strategy._col_model = None  # a new round's delta
    deltas = strategy._collaborative if mode == "col" else None
    out = {}
    for result in round_results(pool, jobs, deltas):
        assert not (set(result.payloads) & set(out)), "a node got two payloads"
        out.update(result.payloads)
    return out


def ray_pool(strategy, workers: int, task: str = ""):
    from cola_fed.federation.ray_pool import RayPool

    config = replace(strategy.config, server=replace(strategy.config.server, engine="ray",
                                                     workers=workers))
    if task:  # the actors build this task's model (same weights) instead
        config = replace(config, task=replace(config.task, name=task))
    return RayPool(config, strategy.engine)


@pytest.mark.slow
def test_every_mode_gives_the_local_payloads_bit_for_bit_on_1_2_and_3_workers(trained,
                                                                              shared_ray):
    with one_thread():
        local = {mode: payloads(LocalPool(trained.engine), trained, jobs_of(trained, mode), mode)
                 for mode in MODES}
    assert len(jobs_of(trained, "col")) >= 3 and all(len(p) == 5 for p in local.values())
    assert local["unmerged"] != local["col"] != local["merged"]  # the modes differ
    three = ray_pool(trained, 3)
    try:
        three.start()
        for workers in (1, 2, 3):
            pool = ray_pool(trained, workers)
            pool.actors = three.actors[:workers]  # the same workers (each loads the model once)
            for mode in MODES:
                assert payloads(pool, trained, jobs_of(trained, mode), mode) == local[mode], (
                    f"{mode}, {workers} workers")
    finally:
        three.close()


@pytest.mark.slow
def test_a_worker_killed_mid_round_changes_nothing(trained, shared_ray):
    jobs = jobs_of(trained, "unmerged")
    with one_thread():
        local = payloads(LocalPool(trained.engine), trained, jobs, "unmerged")
    pool = ray_pool(trained, 2)
    try:
        pool.start()
        before = ray.get([a.pid.remote() for a in pool.actors])
        results = pool.submit(jobs, None)
        got = dict(next(results).payloads)  # the round is under way: its first group is back
        for actor in pool.actors:
            ray.kill(actor, no_restart=False)
        for result in results:
            got.update(result.payloads)
        assert got == local
        assert payloads(pool, trained, jobs, "unmerged") == local  # and the next round too
        after = ray.get([a.pid.remote() for a in pool.actors], timeout=60)
        assert len(set(after)) == 2 and not set(before) & set(after)  # both were replaced
    finally:
        pool.close()


@pytest.mark.slow
def test_a_col_round_sends_only_results_of_the_final_delta(trained, shared_ray):
    """A node whose batch breaks the pass sits in the last group: the groups before it were
    computed under a delta that still held it. None of those results may come out."""
    jobs = jobs_of(trained, "col")
    last = jobs[-1].nodes[-1]
    broken = replace(last, batches=tuple({**b, "x": np.full_like(b["x"], np.nan)}
                                         for b in last.batches))
    hostile = [*jobs[:-1], replace(jobs[-1], nodes=(*jobs[-1].nodes[:-1], broken))]
    without = [replace(j, nodes=tuple(n for n in j.nodes if n.name != last.name))
               for j in jobs]
    without = [j for j in without if j.nodes]
    with one_thread():
        final = payloads(LocalPool(trained.engine), trained, without, "col")
        first_delta = payloads(LocalPool(trained.engine), trained, jobs, "col")
    assert all(first_delta[n] != final[n] for n in final)  # the delta change matters
    for pool in (LocalPool(trained.engine), ray_pool(trained, 2)):
        try:
            with one_thread():
                trained._col_model = None
                results = list(round_results(pool, hostile, trained._collaborative))
        finally:
            pool.close()
        assert [set(r.broken) for r in results if r.broken] == [{last.name}]
        sent = {n: p for r in results for n, p in r.payloads.items()}
        assert sent == final, type(pool).__name__


def test_server_config_is_validated():
    for key, value, error in [("server.engine", "dask", "server.engine: expected one of"),
                              ("server.workers", 0, "server.workers: expected a positive"),
                              ("server.gpus-per-worker", -1.0, "server.gpus-per-worker"),
                              ("server.cpus-per-worker", 0.0, "server.cpus-per-worker")]:
        with pytest.raises(ConfigError, match=error):
            RunConfig.from_flat({key: value})


@pytest.mark.slow
def test_a_batch_that_kills_its_worker_costs_only_its_own_node(trained, shared_ray,
                                                               monkeypatch):
    """One node's batch kills the worker process computing it (``os._exit`` in the model, as a
    crash or the host's OOM killer would): that node is reported broken (counted against it),
    its group-mate still gets the payload a clean pass gives it, the other groups are untouched,
    and the pool keeps ``server.workers`` live actors that serve the next round."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    from crashing_digits import MARKER

    from cola_fed.federation.ray_pool import WorkerDied

    jobs = jobs_of(trained, "unmerged")
    assert len(jobs[0].nodes) == 2
    killer, mate = jobs[0].nodes
    deadly = replace(killer, batches=tuple({**b, "x": marked(b["x"], MARKER)}
                                           for b in killer.batches))
    hostile = [replace(jobs[0], nodes=(deadly, mate)), *jobs[1:]]
    without = [replace(jobs[0], nodes=(mate,)), *jobs[1:]]
    with one_thread():
        clean = payloads(LocalPool(trained.engine), trained, without, "unmerged")
        everyone = payloads(LocalPool(trained.engine), trained, jobs, "unmerged")
    pool = ray_pool(trained, 2, task="crashing_digits:CrashingDigits")
    try:
        results = list(round_results(pool, hostile, None))
        assert not [r.lost for r in results if r.lost]
        assert [set(r.broken) for r in results if r.broken] == [{killer.name}]
        [error] = [r.broken[killer.name] for r in results if r.broken]
        assert isinstance(error, WorkerDied) and "killed the Ray worker" in str(error)
        sent = {n: p for r in results for n, p in r.payloads.items()}
        assert sent == clean  # the mate's bits are those of a clean pass without the killer
        assert len(pool.actors) == 2 and len(set(ray.get([a.pid.remote() for a in pool.actors],
                                                         timeout=60))) == 2
        assert payloads(pool, trained, jobs, "unmerged") == everyone  # the next round
    finally:
        pool.close()


def marked(x: np.ndarray, value: float) -> np.ndarray:
    x = x.copy()
    x.flat[0] = value
    return x
