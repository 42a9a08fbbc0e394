"""Specification of studies on a Ray cluster (``--cluster``): every run of ``compare`` (and of
``regimes``: ``studies/test_regimes.py``) is a one-CPU Ray task on a running cluster, its files written
where the driver runs, byte for byte what the same study writes locally (``meta.json`` records
where and when).

The cluster is real: a head and a second node started with ``ray start`` on this machine, one
CPU each, on 127.0.0.1 only (the suite runs in a loopback-only network namespace,
``tests/loopback.sh``), with token authentication (a fresh token in the environment of the nodes
and of the driver, never in ``~/.ray``). Each node's ``ray start`` runs in a session of its own,
which every process of that node inherits; at the end every process of those sessions is ended
(not with ``ray stop``, which stops every Ray on the machine; not by an environment tag, which
Ray's agents overwrite with their process titles).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from clitools import run_cli, tiny_toml
from realworkers import tagged_processes

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")

# what a run's meta.json records of the machine and the moment (and, on a cluster, of the node);
# its summary's wall_time_s too
META_DIFFERS = {"host", "platform", "created", "git_commit", "wall_time_s", "first_flush", "cluster"}

class Cluster(NamedTuple):
    address: str  # the head's host:port
    env: dict[str, str]  # what a driver needs to join it (the token) and to be ended with it (the tag)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_sessions(sessions: set[int]) -> list[int]:
    """Pids of the live processes (not zombies) whose session id (``/proc/<pid>/stat`` field 6) is one of
    ``sessions``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                state, _, _, session = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            except (OSError, ValueError):
                continue
            if state != "Z" and int(session) in sessions:
                pids.append(int(proc.name))
    return pids


def _end(sessions: set[int]) -> None:
    """SIGTERM every process of ``sessions``, then SIGKILL what is left after a second."""
    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
        for pid in in_sessions(sessions):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while in_sessions(sessions) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    """A head and a second node (``ray start``, one CPU each, 127.0.0.1, token authentication)."""
    pytest.importorskip("ray")
    tag = uuid.uuid4().hex  # the drivers' processes carry it (they end by themselves)
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "ASYNCCORR_TEST_TAG": tag, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
           # no idle Python workers started ahead: the tasks' runtime environment needs workers of its own
           "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0"}
    address = f"127.0.0.1:{_free_port()}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(temp), "--disable-usage-stats",
              "--include-log-monitor", "false"]
    sessions: set[int] = set()
    try:
        starts = []
        for args in (["--head", "--port", address.split(":")[1], "--include-dashboard", "false"],
                     ["--address", address]):  # the second node waits for the head by itself
            starts.append(subprocess.Popen([str(RAY), "start", *args, *common], env=env, start_new_session=True,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            sessions.add(starts[-1].pid)  # a new session's id is its leader's pid
        for start in starts:
            _, err = start.communicate(timeout=120)
            assert start.returncode == 0, err
        yield Cluster(address, env)
    finally:
        _end(sessions)
        shutil.rmtree(temp, ignore_errors=True)
        assert in_sessions(sessions) == [] and tagged_processes(tag) == []


def on_cluster(cluster: Cluster, *args: str) -> subprocess.Popen:
    """``asynccorr *args --cluster <head>`` started as its own process (the driver), joined with the token."""
    return subprocess.Popen([sys.executable, "-m", "asynccorr", *args, "--cluster", cluster.address, "--quiet"],
                            cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def csv_without(path: Path, column: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert rows and column in rows[0]
    return [{k: v for k, v in r.items() if k != column} for r in rows]


def deterministic(meta: dict) -> dict:
    """A run's meta.json without what records the machine and the moment."""
    kept = {k: v for k, v in meta.items() if k not in META_DIFFERS}
    return {**kept, "summary": {k: v for k, v in meta["summary"].items() if k != "wall_time_s"}}


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_comparison_on_two_nodes_writes_here_what_the_local_one_writes_byte_for_byte(capsys, tmp_path,
                                                                                        two_nodes):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_toml("tiny", iterations=6, eval_every=3))
    study = ["compare", "--config", str(config), "--schemes", "sync,async", "--seeds", "0"]
    with on_cluster(two_nodes, *study, "--results", str(tmp_path / "cluster")) as driver:
        code, _, err = run_cli(capsys, *study, "--results", str(tmp_path / "local"), "--quiet")  # meanwhile
        assert code == 0, err
        _, driver_err = driver.communicate(timeout=300)
    assert driver.returncode == 0, driver_err

    cluster, local = tmp_path / "cluster" / "tiny", tmp_path / "local" / "tiny"
    runs = sorted(p.name for p in local.iterdir() if p.is_dir())
    assert runs == ["async-seed0", "sync-seed0"]
    assert sorted(p.name for p in cluster.iterdir() if p.is_dir()) == runs
    nodes = set()
    for run in runs:
        here, there = files(local / run), files(cluster / run)
        assert set(here) == set(there) >= {"config.json", "metrics.csv", "eval.csv", "trajectory.csv",
                                           "params.npy", "meta.json"}
        for name in here.keys() - {"meta.json"}:  # metrics, evaluations, trajectory, parameters, checkpoints
            assert here[name] == there[name], (run, name)
        meta_here, meta_there = json.loads(here["meta.json"]), json.loads(there["meta.json"])
        assert deterministic(meta_here) == deterministic(meta_there)
        assert meta_there["cluster"]["address"] == two_nodes.address and "cluster" not in meta_here
        assert meta_there["status"] == "completed"
        nodes.add(meta_there["cluster"]["node"])
    assert len(nodes) == 2  # both nodes trained a run (one CPU each, the two runs at once)
    assert (cluster / "summary.md").read_bytes() == (local / "summary.md").read_bytes()
    assert csv_without(cluster / "summary.csv", "wall_time_s") == csv_without(local / "summary.csv", "wall_time_s")
    assert not list(cluster.glob(".*.lock"))  # every run's lock released

    # the cluster never replaces a result without --overwrite: one line, status 2, nothing touched
    before = files(cluster)
    code, _, err = run_cli(capsys, *study, "--results", str(tmp_path / "cluster"), "--cluster", two_nodes.address)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err
    assert files(cluster) == before


def tasks_in_this_process(monkeypatch) -> None:
    """The cluster's transport replaced by this process: every task runs here, at once, in order."""
    from asynccorr.studies import cluster

    def run_tasks(address, fn, calls, on_result):
        for i, args in enumerate(calls):
            on_result(i, fn(*args), "here")

    monkeypatch.setattr(cluster, "check_reachable", lambda address: None)
    monkeypatch.setattr(cluster, "connected", lambda address: contextlib.nullcontext())
    monkeypatch.setattr(cluster, "run_tasks", run_tasks)


def test_resume_on_a_cluster_reuses_finished_runs_continues_killed_ones_and_trains_missing_ones(
        capsys, tmp_path, monkeypatch):
    """``compare --resume --cluster``: as locally, decided here; a killed run's checkpoint goes to its task."""
    tasks_in_this_process(monkeypatch)
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_toml("tiny", iterations=4, eval_every=2, checkpoint_every=2))
    study = ["compare", "--config", str(config), "--schemes", "sync,async,learner", "--seeds", "0", "--quiet"]
    on_cluster = [*study, "--results", str(tmp_path / "cluster"), "--cluster", "head:6379"]
    assert run_cli(capsys, *study, "--results", str(tmp_path / "local"))[0] == 0
    assert run_cli(capsys, *on_cluster)[0] == 0
    cluster, local = tmp_path / "cluster" / "tiny", tmp_path / "local" / "tiny"
    sync = files(cluster / "sync-seed0")
    killed = cluster / "async-seed0"  # as if killed after its checkpoint at update 2 (its only one)
    assert [p.name for p in (killed / "checkpoint").iterdir()] == ["ckpt-000000002.npz"]
    meta = json.loads((killed / "meta.json").read_text())
    (killed / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    shutil.rmtree(cluster / "learner-seed0")  # never started

    code, _, err = run_cli(capsys, *on_cluster, "--resume")
    assert code == 0, err
    assert "1 finished runs reused, 1 continued from a checkpoint, 0 restarted, 1 to train" in " ".join(err.split())
    assert files(cluster / "sync-seed0") == sync  # reused as it was
    for run in ("async-seed0", "learner-seed0"):
        here, there = files(local / run), files(cluster / run)
        assert {k: v for k, v in here.items() if k != "meta.json"} == \
               {k: v for k, v in there.items() if k != "meta.json"}, run
        assert json.loads(there["meta.json"])["cluster"] == {"address": "head:6379", "node": "here"}
    assert json.loads((killed / "meta.json").read_text())["resumed_from"] == 2
    assert (cluster / "summary.md").read_bytes() == (local / "summary.md").read_bytes()
    assert not list(cluster.glob(".*.lock"))
