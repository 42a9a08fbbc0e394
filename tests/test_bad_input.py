"""Specification of bad input: every case exits with status 2, prints exactly one line
``error: ...`` on stderr naming the offending field or argument, and leaves results
written earlier byte-for-byte untouched.

One tiny real run is trained once for the module (``earlier``); every case then
runs against its results folder and hashes it before and after. The cases fail
before any JAX compilation (config parsing, argument checks, file checks).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import run_cli, tiny_toml

from asynccorr.cli import main
from asynccorr.runs import locks

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "experiments" / "paper.toml"

TINY = tiny_toml("tiny", iterations=2)


class Earlier:
    """The results of a finished run, and the config that produced them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results = root / "results"
        self.config = root / "tiny.toml"
        self.run_dir = self.results / "tiny" / "async-seed0"


def tree_hash(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and every directory, as '<dir>') under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Earlier:
    env = Earlier(tmp_path_factory.mktemp("bad-input"))
    env.config.write_text(TINY)
    main(["train", "--scheme", "async", "--config", str(env.config), "--results", str(env.results), "--quiet"])
    assert (env.run_dir / "params.npy").is_file()
    return env


def assert_rejected(capsys, earlier: Earlier, args: list[str], needle: str, also_untouched: Path | None = None):
    """The common specification of a bad input."""
    watched = [earlier.root] + ([also_untouched] if also_untouched is not None else [])
    before = [tree_hash(w) for w in watched]
    code, _, err = run_cli(capsys, *args)
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert [tree_hash(w) for w in watched] == before


# ----------------------------------------------------------------------------- the config file

BAD_TOML = {
    "unknown top-level key": ("colour = 'red'", "unknown config key colour"),
    "unknown key in a section": ("[train]\nspeed = 3", "train.speed"),
    "unknown section": ("[trian]\niterations = 3", "trian"),
    "string for an int": ("[train]\niterations = 'many'", "train.iterations"),
    "float for an int": ("[workers]\ncount = 2.5", "workers.count"),
    "bool for a number": ("[optim]\npolicy_lr = true", "optim.policy_lr"),
    "list for a table": ("learner = [1, 2]", "learner"),
    "table for a list": ("[schemes]\nseeds = { a = 1 }", "schemes.seeds"),
    "malformed TOML": ("[train\niterations = 3", "malformed TOML"),
    "zero workers": ("[workers]\ncount = 0", "workers.count"),
    "more workers than the limit": ("[workers]\ncount = 16385", "16,384"),
    "negative learning rate": ("[optim]\npolicy_lr = -0.1", "optim.policy_lr"),
    "zero learning rate": ("[optim]\nvalue_lr = 0.0", "optim.value_lr"),
    "NaN learning rate": ("[optim]\npolicy_lr = nan", "optim.policy_lr"),
    "infinite learning rate": ("[optim]\npolicy_lr = inf", "optim.policy_lr"),
    "unknown scheme": ("[schemes]\ncompare = ['async', 'teleport']", "schemes.compare"),
    "unknown protocol": ("[schemes]\nprotocol = 'telepathy'", "schemes.protocol"),
    "unknown protocol of a scheme": ("[schemes]\ncompare = ['modify@telepathy']", "schemes.compare"),
    "negative phase cost": ("[workers]\napply_cost_ratio = -1.0", "workers.apply_cost_ratio"),
    "unknown backend": ("[workers]\nbackend = 'mpi'", "workers.backend"),
    "unknown env": ("[env]\nname = 'boat'", "env"),
    "unknown env parameter": ("[env]\nparams = { wingspan = 3.0 }", "wingspan"),
    "zero wheelbase": ("[env]\nparams = { wheelbase = 0.0 }", "wheelbase"),
    "non-finite amplitude": ("[env]\nparams = { amplitude = nan }", "amplitude"),
    "env parameter not a number": ("[env]\nparams = { amplitude = \"big\" }", "env.amplitude must be a number"),
    "env parameter a list": ("[env]\nparams = { dt = [0.1] }", "env.dt must be a number"),
    "env integer parameter a fraction": ("[env]\nparams = { max_steps = 200.5 }", "env.max_steps must be an integer"),
    "dynamic env parameter a boolean": ("[env]\nname = 'dynamic'\nparams = { mass = true }", "env.mass must be a number"),
    "unknown delay model": ("[workers]\ndelay = 'bursty'", "workers.delay"),
    "unknown activation": ("[learner]\nactivation = 'sigmoidal'", "learner.activation"),
    "empty network list": ("[learner]\npolicy_hidden = []", "learner.policy_hidden"),
    "negative iterations": ("[train]\niterations = -5", "train.iterations"),
    "eval_every 0": ("[train]\neval_every = 0", "train.eval_every"),
    "negative checkpoint interval": ("[train]\ncheckpoint_every = -1", "train.checkpoint_every"),
    "zero divergence bound": ("[train]\ndivergence_loss = 0.0", "train.divergence_loss"),
    "duplicate seeds": ("[schemes]\nseeds = [1, 1]", "schemes.seeds"),
    "seed beyond 32 bits": ("[train]\nseed = 4294967296", "train.seed"),
    "probability above 1": ("[workers]\nstraggler_prob = 1.5", "workers.straggler_prob"),
    "discount above 1": ("[learner]\ngamma = 1.5", "learner.gamma"),
    "bad experiment name": ("name = '../escape'", "name"),
    "unknown learner kind": ("[learner]\nkind = 'ppo'", "learner.kind"),
    "zero A3C rollout length": ("[learner.a3c]\nn_steps = 0", "learner.a3c.n_steps"),
    "negative A3C rollout length": ("[learner.a3c]\nn_steps = -4", "learner.a3c.n_steps"),
    "no A3C envs": ("[learner.a3c]\nenvs = 0", "learner.a3c.envs"),
    "negative entropy coefficient": ("[learner.a3c]\nentropy_coef = -0.01", "learner.a3c.entropy_coef"),
    "GAE lambda above 1": ("[learner.a3c]\ngae_lambda = 1.5", "learner.a3c.gae_lambda"),
    "log-std bounds inverted": ("[learner.a3c]\nlog_std_min = 1.0\nlog_std_max = -1.0", "inverted"),
    "log-std start outside its bounds": ("[learner.a3c]\nlog_std_init = 2.0", "learner.a3c.log_std_init"),
    "unknown A3C key": ("[learner.a3c]\nclip_ratio = 0.2", "learner.a3c.clip_ratio"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_a_bad_config_file_is_rejected_with_one_line_naming_the_field(capsys, tmp_path, earlier, case):
    text, needle = BAD_TOML[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert_rejected(capsys, earlier, ["train", "--config", str(path), "--results", str(earlier.results)], needle)


def test_a_config_file_that_is_not_utf8_is_malformed(capsys, tmp_path, earlier):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00name")
    assert_rejected(capsys, earlier, ["train", "--config", str(path), "--results", str(earlier.results)],
                    "malformed TOML")


# ----------------------------------------------------------------------------- the command line


def cli_cases(earlier: Earlier) -> dict[str, tuple[list[str], str]]:
    cfg, res = str(earlier.config), str(earlier.results)
    train = ["train", "--config", cfg, "--results", res]
    compare = ["compare", "--config", cfg, "--results", res]
    return {
        "missing config file": (["train", "--config", str(earlier.root / "nope.toml"), "--results", res],
                                "not found"),
        "config path is a directory": (["train", "--config", str(earlier.root), "--results", res], "directory"),
        "negative workers": ([*train, "--workers", "-1"], "workers.count"),
        "an absurd worker count": ([*train, "--workers", "100000"], "workers.count must be in [1, 16,384]"),
        "zero iterations": ([*train, "--iterations", "0"], "train.iterations"),
        "negative seed": ([*train, "--seed", "-1"], "train.seed"),
        "seed that is not a number": ([*train, "--seed", "abc"], "--seed"),
        "unknown option": ([*train, "--no-such-flag"], "--no-such-flag"),
        "unknown command": (["fly"], "fly"),
        "unknown scheme": ([*train, "--scheme", "hogwild"], "hogwild"),
        "unknown protocol": ([*train, "--scheme", "modify@telepathy"], "modify@telepathy"),
        "the oracle on real workers": ([*train, "--scheme", "modify@oracle", "--backend", "mp"], "'sim' only"),
        "Ape-X's replay with a scheme other than learner": (
            ["train", "--config", str(REPO / "experiments" / "q-apex.toml"), "--scheme", "async", "--results", res],
            "needs the learner scheme"),
        "a scheme named twice": ([*compare, "--schemes", "modify,modify@server"], "twice"),
        "unknown backend": ([*train, "--backend", "mpi"], "workers.backend"),
        "unknown env": ([*train, "--env", "boat"], "boat"),
        "modify-dense on the default net": (["train", "--scheme", "modify-dense", "--config", str(PAPER),
                                             "--results", res], "dense_max_params"),
        "unknown scheme in a list": ([*compare, "--schemes", "async,teleport"], "schemes.compare"),
        "empty scheme list": ([*compare, "--schemes", ","], "--schemes"),
        "bad seeds text": ([*compare, "--seeds", "0,x"], "--seeds"),
        "duplicate seeds": ([*compare, "--seeds", "1,1"], "schemes.seeds"),
        "resume and overwrite together": ([*train, "--scheme", "async", "--resume", "--overwrite"], "--resume"),
        "resume with no run": ([*train, "--scheme", "modify", "--resume"], "no run to resume"),
        "resume with a different config": ([*train, "--scheme", "async", "--resume", "--iterations", "3"],
                                           "train.iterations"),
        "train into an existing run": ([*train, "--scheme", "async"], "--overwrite"),
        "compare where one of the runs exists": ([*compare, "--schemes", "sync,async", "--seeds", "0"],
                                                 "--overwrite"),
        "a cluster address that is not host:port": ([*compare, "--seeds", "5", "--cluster", "head"],
                                                    "--cluster must be host:port"),
        "a cluster nobody runs": ([*compare, "--seeds", "5", "--cluster", "127.0.0.1:1"], "cannot reach"),
        "a cluster run on real workers": ([*compare, "--schemes", "async", "--seeds", "5", "--backend", "mp",
                                           "--cluster", "127.0.0.1:1"], "sim backend"),
        "a study on a cluster in parallel jobs": (["regimes", "--jobs", "2", "--cluster", "127.0.0.1:1"],
                                                  "--jobs and --cluster"),
        "--set without a value": ([*train, "--set", "optim.policy_lr"], "--set wants section.key=value"),
        "--set of an unknown key": ([*train, "--set", "optim.speed=3"], "unknown config key optim.speed"),
        "--set of a wrong type": ([*compare, "--set", "train.iterations=1.5"], "train.iterations must be an integer"),
        "--set of a bad value": ([*train, "--set", "workers.count=0"], "workers.count"),
        "--set into a value": ([*train, "--set", "name.x=1"], "name is a value, not a section"),
        "--set of an unknown study key": (["regimes", "--set", "grid=3"], "unknown config key regimes.grid"),
        "--set resuming a run with another value": ([*train, "--scheme", "async", "--resume", "--set",
                                                     "optim.policy_lr=0.5"], "optim.policy_lr"),
    }


CLI_CASES = sorted(cli_cases(Earlier(Path("."))))


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_arguments_are_rejected_with_one_line_naming_the_argument(capsys, earlier, case):
    args, needle = cli_cases(earlier)[case]
    assert_rejected(capsys, earlier, args, needle)


def test_an_absurd_worker_count_is_refused_at_once_by_the_command_line(tmp_path):
    """``asynccorr train --workers 100000``: status 2, one line naming the limit, before any set-up (the
    process's time is its imports)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "asynccorr", "--no-jax-cache", "train", "--workers", "100000",
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False,
                          cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: workers.count must be in [1, 16,384]")
    assert time.perf_counter() - started < 60  # imports only: ~3 s idle, never a set-up of 100,000 workers
    assert not any(tmp_path.iterdir())


def test_resuming_a_run_that_crashed_before_its_first_checkpoint_is_rejected(capsys, tmp_path, earlier):
    results = tmp_path / "results"
    shutil.copytree(earlier.results, results)
    meta = results / "tiny" / "async-seed0" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "status": "running"}))
    assert_rejected(capsys, earlier, ["train", "--scheme", "async", "--config", str(earlier.config), "--results",
                                      str(results), "--resume"], "no checkpoint", also_untouched=results)


def test_resuming_when_no_checkpoint_loads_is_rejected_and_nothing_is_deleted(capsys, tmp_path, earlier):
    """Every checkpoint truncated (as a failing disk leaves them): one line, status 2, files kept."""
    config = tmp_path / "ckpt.toml"
    config.write_text(tiny_toml("ckpt", iterations=6, checkpoint_every=2))
    results = tmp_path / "results"
    args = ["train", "--scheme", "async", "--config", str(config), "--results", str(results), "--quiet"]
    run_cli(capsys, *args)
    run = results / "ckpt" / "async-seed0"
    meta = run / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "status": "running"}))
    for path in sorted((run / "checkpoint").iterdir()):
        path.write_bytes(path.read_bytes()[:64])
    assert_rejected(capsys, earlier, [*args, "--resume"], "no checkpoint of", also_untouched=results)


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]])
def test_training_into_a_run_a_live_process_owns_is_rejected_naming_it(capsys, tmp_path, earlier, extra):
    results = tmp_path / "results"
    shutil.copytree(earlier.results, results)
    run = results / "tiny" / "async-seed0"
    owner = locks.acquire(run, take_over=False)  # this process: alive
    try:
        assert_rejected(capsys, earlier, ["train", "--scheme", "async", "--config", str(earlier.config),
                                          "--results", str(results), *extra],
                        f"in use by pid {os.getpid()}", also_untouched=results)
        assert_rejected(capsys, earlier, ["compare", "--schemes", "async", "--seeds", "0", "--config",
                                          str(earlier.config), "--results", str(results), *extra],
                        f"in use by pid {os.getpid()}", also_untouched=results)
    finally:
        locks.release(run, owner)


def test_a_stale_lock_is_not_taken_without_resume_or_overwrite(capsys, tmp_path, earlier):
    results = tmp_path / "results"
    shutil.copytree(earlier.results, results)
    run = results / "tiny" / "async-seed0"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    locks.lock_path(run).write_text(json.dumps(locks.this_process()._replace(pid=gone.pid, start=None)._asdict()))
    assert_rejected(capsys, earlier, ["train", "--scheme", "async", "--config", str(earlier.config),
                                      "--results", str(results)], f"stale lock of pid {gone.pid}",
                    also_untouched=results)


# ----------------------------------------------------------------------------- plot


def _corrupt(folder: Path, earlier: Earlier, how: str) -> Path:
    """A copy of the earlier experiment folder with one file damaged."""
    shutil.copytree(earlier.results / "tiny", folder)
    run = folder / "async-seed0"
    if how == "csv":
        (run / "metrics.csv").write_text("iteration,policy_loss\n1,0.5\n2,not-a-number,7\n")
    elif how == "meta":
        text = (run / "meta.json").read_text()
        (run / "meta.json").write_text(text[: len(text) // 2])
    return folder


PLOT_CASES = {
    "missing folder": (lambda tmp, e: tmp / "no" / "such", "does not exist"),
    "empty folder": (lambda tmp, e: (tmp / "empty").mkdir() or tmp / "empty", "no run directories"),
    "a file, not a folder": (lambda tmp, e: (tmp / "f.txt").write_text("x") and tmp / "f.txt", "not a directory"),
    "corrupt metrics CSV": (lambda tmp, e: _corrupt(tmp / "csv", e, "csv"), "metrics.csv"),
    "truncated meta.json": (lambda tmp, e: _corrupt(tmp / "meta", e, "meta"), "meta.json"),
}


@pytest.mark.parametrize("case", sorted(PLOT_CASES))
def test_plot_on_an_unusable_folder_is_rejected_with_one_line(capsys, tmp_path, earlier, case):
    make, needle = PLOT_CASES[case]
    target = make(tmp_path, earlier)
    assert_rejected(capsys, earlier, ["plot", str(target)], needle,
                    also_untouched=target if target.is_dir() else None)


# ----------------------------------------------------------------------------- replay


def _recorded(tmp: Path, e: Earlier, schedule_text: str | None) -> Path:
    """A copy of the earlier run with ``schedule_text`` as its schedule (None: without one)."""
    from asynccorr.backends import schedule

    run = tmp / "results" / "tiny" / "async-seed0"
    shutil.copytree(e.run_dir, run)
    if schedule_text is not None:
        record = json.loads((run / "config.json").read_text())
        head = schedule.header("mp", "async", record["workers"]["count"], record["train"]["seed"])
        entry = {"worker": 0, "incarnation": 0, "job": 1, "version": 0, "version_k": 0, "outcome": "applied",
                 "at": 0.01, "compute_time": 0.01}
        (run / schedule.FILE).write_text(schedule_text.format(
            head=json.dumps(head), old=json.dumps({**head, "package": "0.0.1"}), entry=json.dumps(entry),
            second=json.dumps({**entry, "job": 2})))
    return run


REPLAY_CASES = {
    "a run directory without a schedule": (None, "no schedule in"),
    "a schedule from another version": ('{old}\n{entry}\n{{"end": "completed", "updates": 1, "dropped": 0}}\n',
                                        "recorded by asynccorr 0.0.1"),
    "a truncated schedule": ("{head}\n{entry}\n" + '{{"worker": 1, "incarn', "truncated"),
    "a schedule without its end line": ("{head}\n{entry}\n", "truncated"),
    "a schedule with a job missing": ('{head}\n{second}\n{{"end": "completed", "updates": 1, "dropped": 0}}\n',
                                      "without a gap"),
    "not a run directory": ("", "no run directory"),
}


@pytest.mark.parametrize("case", sorted(REPLAY_CASES))
def test_replaying_a_run_without_a_usable_schedule_is_one_line_and_writes_nothing(capsys, tmp_path, earlier, case):
    text, needle = REPLAY_CASES[case]
    run = tmp_path / "nothing-here" if case == "not a run directory" else _recorded(tmp_path, earlier, text)
    assert_rejected(capsys, earlier, ["replay", str(run)], needle, also_untouched=tmp_path)


# ----------------------------------------------------------------------------- results paths


def results_paths(earlier: Earlier) -> dict[str, tuple[str, str]]:
    """A results path that cannot hold results -> (the path, the words the error says)."""
    a_file = earlier.root / "tiny.toml"  # a file that exists
    return {
        "a file": (str(a_file), "a file, not a folder"),  # plot writes into <out>/<experiment>: through it
        "a path through a file": (str(a_file / "sub"), f"goes through {a_file}, a file, not a folder"),
        "a file of the kernel's": ("/proc/version", "a file, not a folder"),
        "a folder nobody may write in": ("/sys", "permission denied"),
    }


RESULTS_PATHS = sorted(results_paths(Earlier(Path("."))))


def commands_writing_to(earlier: Earlier, path: str) -> dict[str, list[str]]:
    cfg = str(earlier.config)
    study = earlier.root / "study.toml"
    study.write_text('name = "s"\nworkers = [1]\nlearning_rates = [[3e-4, 1e-3]]\ndelays = ["homogeneous"]\n'
                     'schemes = ["sync"]\nseeds = [0]\n[experiment.train]\niterations = 2\n')
    return {
        "train": ["train", "--config", cfg, "--results", path],
        "compare": ["compare", "--config", cfg, "--results", path],
        "regimes": ["regimes", "--config", str(study), "--results", path],
        "plot": ["plot", str(earlier.results), "--out", path],
    }


@pytest.mark.parametrize("command", ["train", "compare", "regimes", "plot"])
@pytest.mark.parametrize("case", RESULTS_PATHS)
def test_a_results_path_that_cannot_hold_results_is_one_line_naming_it(capsys, earlier, case, command):
    path, needle = results_paths(earlier)[case]
    args = commands_writing_to(earlier, path)[command]
    assert_rejected(capsys, earlier, args, needle)


def _read_only_mount(cmd: str) -> subprocess.CompletedProcess | None:
    """``cmd`` run in a private mount namespace with a read-only tmpfs at $RO; None where the
    machine allows no such namespace."""
    script = f'mount -t tmpfs -o ro none "$RO" && {cmd}'
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        if subprocess.run([*prefix, "true"], check=False, capture_output=True).returncode == 0:
            return subprocess.run([*prefix, "sh", "-c", script], check=False, capture_output=True, text=True,
                                  env={**os.environ, "RO": os.environ["RO"]})
    return None


@pytest.mark.parametrize("command", ["train", "compare", "regimes", "plot"])
def test_a_read_only_file_system_is_one_line_and_exit_2(tmp_path, earlier, command, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setenv("RO", str(ro))
    args = " ".join(f"'{a}'" for a in commands_writing_to(earlier, str(ro / "results"))[command])
    before = tree_hash(earlier.root)
    done = _read_only_mount(f"'{sys.executable}' -m asynccorr.cli {args}")
    if done is None:
        pytest.skip("no private mount namespace on this machine (unshare --mount)")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "read-only file system" in lines[0]
    assert tree_hash(earlier.root) == before


# ----------------------------------------------------------------------------- not errors


def test_resuming_a_finished_run_says_so_and_changes_nothing(capsys, earlier):
    before = tree_hash(earlier.root)
    code, out, err = run_cli(capsys, "train", "--scheme", "async", "--config", str(earlier.config), "--results",
                             str(earlier.results), "--resume", "--quiet")
    assert code == 0, err
    assert "already finished" in out
    assert tree_hash(earlier.root) == before


def test_the_earlier_run_is_marked_completed(earlier):
    meta = json.loads((earlier.run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["diverged_at"] is None
