"""`cola-fed simulate` needs no source checkout: the built-in simulations ship in the package, a
config is a built-in name or any TOML path, and the Flower app is written for each run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cola_fed.config import flatten, tomllib
from cola_fed.errors import ConfigError
from cola_fed.federation.simulate import (
    COMPONENTS,
    SIMULATIONS,
    app_config,
    builtin_names,
    resolve,
    write_app,
)

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_takes_a_builtin_name_or_any_toml_path(tmp_path, monkeypatch):
    assert resolve("digits") == SIMULATIONS / "digits.toml"
    mine = tmp_path / "experiments" / "my run.toml"
    mine.parent.mkdir()
    mine.write_text('task.name = "digits"\n')
    assert resolve(str(mine)) == mine
    monkeypatch.chdir(tmp_path)
    assert resolve("experiments/my run.toml").resolve() == mine  # relative to the CWD
    (tmp_path / "digits.toml").write_text("num-server-rounds = 1\n")
    assert resolve("digits.toml").resolve() == tmp_path / "digits.toml"  # the file, not built-in
    (tmp_path / "no-suffix").write_text("num-server-rounds = 1\n")
    assert resolve("./no-suffix").resolve() == tmp_path / "no-suffix"


def test_resolve_errors_list_the_builtin_simulations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listed = ", ".join(builtin_names())
    with pytest.raises(ConfigError, match="no built-in simulation 'digts'") as err:
        resolve("digts")
    assert listed in str(err.value) and "path of a .toml file" in str(err.value)
    with pytest.raises(ConfigError, match="no simulation config file") as err:
        resolve("simulations/digits.toml")  # the old checkout path
    assert str(tmp_path / "simulations" / "digits.toml") in str(err.value)
    assert "give its name: 'digits'" in str(err.value) and listed in str(err.value)


def test_the_written_app_is_the_checkouts_app_and_flower_accepts_it(tmp_path):
    from flwr.clientapp import ClientApp
    from flwr.common.config import validate_config
    from flwr.serverapp import ServerApp
    from flwr.supercore.object_ref import load_app

    app = write_app(tmp_path / "app")
    assert [p.name for p in app.iterdir()] == ["pyproject.toml"]
    written = tomllib.loads((app / "pyproject.toml").read_text())
    checkout = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ours, theirs = written["tool"]["flwr"]["app"], checkout["tool"]["flwr"]["app"]
    assert ours["publisher"] == theirs["publisher"]
    assert ours["components"] == theirs["components"] == COMPONENTS
    assert flatten(ours["config"]) == app_config()  # and pyproject's: tests/test_config.py
    # as `flwr run` checks it (the components found on sys.path), and as Flower loads them
    valid, errors, _ = validate_config(written, check_module=True, project_dir=app)
    assert valid, errors
    assert isinstance(load_app(COMPONENTS["serverapp"], RuntimeError, app), ServerApp)
    assert isinstance(load_app(COMPONENTS["clientapp"], RuntimeError, app), ClientApp)


@pytest.mark.slow
def test_simulate_from_an_installed_wheel_outside_the_checkout(tmp_path):
    """Build a wheel from a copy of the sources, install it into a folder of its own, and run
    `python -m cola_fed.cli simulate my.toml` in a folder outside the checkout, with the
    installed copy first on PYTHONPATH (this environment provides the dependencies). The
    installed apps module is marked to record each process that imports it: the ServerApp's
    and the ClientApps' processes must all import the installed copy, never the checkout."""
    pytest.importorskip("ray")
    pytest.importorskip("sklearn")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "cola_fed", src / "cola_fed",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("cola_fed-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", str(wheel), "--no-deps", "--no-compile", "-q",
                    "--target", str(site)], check=True, capture_output=True)
    assert sorted(p.stem for p in (site / "cola_fed" / "simulations").glob("*.toml")) == \
        builtin_names()
    marks = tmp_path / "marks"
    marks.mkdir()
    with (site / "cola_fed" / "apps.py").open("a") as apps:
        apps.write(f"\nimport os as _os, pathlib as _p\n"
                   f"_p.Path({str(marks)!r}, str(_os.getpid())).write_text(__file__)\n")

    run = tmp_path / "elsewhere"
    run.mkdir()
    (run / "my.toml").write_text(
        'task.name = "digits"\nnum-server-rounds = 2\nstrategy.min-available-nodes = 2\n'
        "strategy.evaluate-every = 1\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import cola_fed; print(cola_fed.__file__)"],
                           cwd=run, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(site / "cola_fed" / "__init__.py")
    proc = subprocess.Popen([sys.executable, "-m", "cola_fed.cli", "simulate", "my.toml"],
                            cwd=run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()  # it stops the Flower processes it started on its way out
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-5000:]
    metrics = json.loads((run / "results" / "my" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert all(r["nodes"] == 2 and r["failed"] == 0 for r in metrics["rounds"][1:])
    imported = {path.read_text() for path in marks.iterdir()}
    assert imported == {str(site / "cola_fed" / "apps.py")}
    assert len(list(marks.iterdir())) >= 2, "the ServerApp's and the ClientApps' processes"
