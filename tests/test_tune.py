"""rnnrbm tune: the search space, the SQLite study (trials, pruning, resuming, Ctrl+C, best.toml
reproducing the best trial), settings and storage errors before any trial, and PostgreSQL for
real: a throwaway server, two workers on one study, and a worker killed mid-trial."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from conftest import one_sentence_error, run

optuna = pytest.importorskip("optuna")

# Tiny trials: with n_hidden <= 20 log Z is exact, so valid_ll costs little.
SPACE = """
lr = {low = 1e-6, high = 0.1, log = true}
n_hidden = {low = 8, high = 16}
n_recurrent = {low = 4, high = 8}
k = {low = 1, high = 3}
chunk = 12
eval_frames = 40
eval_chains = 5
eval_betas = 20
"""
# The metrics of an epoch that do not depend on the clock.
SAME = ("epoch", "train_monitor", "train_cost", "valid_monitor", "valid_ll", "valid_ll_stderr", "updates")


@pytest.fixture
def study_env(tmp_path, toy_npz, monkeypatch):
    """A working folder holding toy.npz and the small search space; runs/ is made there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.toml").write_text(SPACE)
    return tmp_path


def tune(*args):
    return run("tune", "--data", "toy.npz", "--space", "space.toml", *args)


def load(study_dir: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def first_metrics(run_dir: Path) -> dict:
    line = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()[0]
    return {k: v for k, v in json.loads(line).items() if k in SAME}


def finished(study) -> list:
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


# --- the search space ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["rnn-rbm", "rnn-nade"])
def test_the_default_space_names_only_settings_that_exist(model, toy_npz):
    from rnnrbm_cli.config import Settings
    from rnnrbm_cli.tune import base_settings, read_space

    space = read_space(None, model)
    assert set(space.params) | set(space.fixed) <= set(Settings().flat())
    assert {"lr", "batch", "n_hidden", "n_recurrent", "lr_schedule"} <= set(space.params)
    assert ("k" in space.params) == (model == "rnn-rbm")  # the RNN-NADE has no Gibbs chain
    base_settings(flags={"data": str(toy_npz), "model_type": model}, space=space)  # every end is a valid setting


def test_show_space_prints_every_models_search_space_from_its_record():
    from rnnrbm_cli import models

    r = run("tune", "--show-space")
    assert r.exit_code == 0, r.stderr
    doc = tomllib.loads(r.stdout)
    assert list(doc) == ["rnn-rbm", "rnn-nade", "rnn"]
    for name, table in doc.items():
        assert table == models.record(name).search_space
    # the two older models' spaces as the packaged tune_space.toml held them before the records
    assert doc["rnn-rbm"] == {
        "optimizer": {"choices": ["sgd", "adam"]}, "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "momentum": {"low": 0.0, "high": 0.95}, "lr_schedule": {"choices": ["constant", "plateau"]},
        "batch": {"choices": [1, 4, 16]}, "k": {"low": 1, "high": 25}, "n_hidden": {"low": 50, "high": 300, "step": 25},
        "n_recurrent": {"low": 50, "high": 200, "step": 25}, "learn_u0": True,
        "pretrain_rbm_epochs": {"choices": [0, 10, 20]}, "pretrain_rnn_epochs": {"choices": [0, 20, 40]},
    }
    assert doc["rnn-nade"] == {
        "optimizer": "adam", "lr": {"low": 2e-4, "high": 5e-3, "log": True},
        "lr_schedule": {"choices": ["constant", "plateau"]}, "batch": {"choices": [1, 2, 4]},
        "n_hidden": {"low": 50, "high": 300, "step": 25}, "n_recurrent": {"low": 50, "high": 200, "step": 25},
        "rnn": {"choices": ["tanh", "gru", "lstm"]}, "learn_u0": True,
    }


def test_a_space_file_reads_as_written(tmp_path):
    from rnnrbm_cli.tune import Param, read_space

    path = tmp_path / "s.toml"
    path.write_text("""
optimizer = "adam"
lr = {low = 1e-4, high = 1e-2, log = true}
momentum = {low = 0, high = 1, step = 0.25}
[rnn-rbm]
k = {low = 1, high = 25}
batch = {choices = [1, 8, 32]}
[rnn-nade]
n_hidden = {low = 50, high = 300, step = 50}
""")
    rbm = read_space(path, "rnn-rbm")
    assert rbm.fixed == {"optimizer": "adam"}
    assert rbm.params == {
        "lr": Param("lr", "float", low=1e-4, high=1e-2, log=True),
        "momentum": Param("momentum", "float", low=0.0, high=1.0, step=0.25),  # a float setting: float ends
        "k": Param("k", "int", low=1, high=25),
        "batch": Param("batch", "categorical", choices=(1, 8, 32)),
    }
    nade = read_space(path, "rnn-nade")
    assert set(nade.params) == {"lr", "momentum", "n_hidden"}
    assert nade.params["n_hidden"] == Param("n_hidden", "int", low=50, high=300, step=50)


BAD_SPACES = {
    "unknown setting": ("n_hiden = {low = 8, high = 16}", "unknown setting n_hiden"),
    "empty range": ("lr = {low = 0.1, high = 0.01}", "empty range"),
    "one-point range": ("k = {low = 3, high = 3}", "empty range"),
    "no choices": ("batch = {choices = []}", "no choices"),
    "log from zero": ("lr = {low = 0, high = 0.1, log = true}", "log scale"),
    "half a range": ("lr = {low = 0.001}", "needs both low and high"),
    "unknown field": ("lr = {low = 0.001, high = 0.1, scale = 2}", "unknown field(s) scale"),
    "float ends of an int": ("n_hidden = {low = 8.5, high = 16}", "integer setting"),
    "out of the setting's range": ("k = {low = 0, high = 5}", "k = 0 is out of range"),
    "a range of a string": ('optimizer = {low = 1, high = 2}', "not a number"),
    "a bare list": ("batch = [1, 8]", "choices = [...]"),
    "a flag's key": ('data = "nottingham"', "--data"),
    "run_dir": ('run_dir = "x"', "own run directory"),
    "a searched seed": ("seed = {low = 1, high = 9}", "may only be fixed"),
    "a bad fixed value": ('optimizer = "rmsprop"\nlr = {low = 0.001, high = 0.1}', "optimizer must be sgd or adam"),
    "no table for the model": ("[rnn-nade]\nlr = {low = 0.001, high = 0.1}", "no search space for rnn-rbm"),
    "nothing searched": ("chunk = 12", "searches nothing"),
    "not TOML": ("lr = {low = ", "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_a_bad_space_is_one_sentence_before_any_trial(case, study_env):
    text, words = BAD_SPACES[case]
    (study_env / "space.toml").write_text(text)
    line = one_sentence_error(tune("--trials", "1", "--epochs", "1", "--eval-every", "1"), code=2)
    assert words in line, line
    assert not (study_env / "runs").exists()  # no study, no trial folder


def test_other_settings_errors_are_one_sentence_before_any_trial(study_env):
    line = one_sentence_error(tune("--epochs", "2", "--eval-every", "3"), code=2)
    assert "shorter than --eval-every" in line
    line = one_sentence_error(run("tune", "--data", "no-such.npz", "--space", "space.toml"), code=1)
    assert "no-such" in line
    line = one_sentence_error(tune("--study", "../escape"), code=2)
    assert "study name" in line
    assert not (study_env / "runs").exists()


def test_the_cli_spells_the_library_values():
    from rnnrbm_cli import cli_tune, tune, tune_storage

    assert cli_tune._PRUNERS == tune.PRUNERS
    assert (cli_tune._DEFAULT_EPOCHS, cli_tune._DEFAULT_EVAL_EVERY) == (tune.DEFAULT_EPOCHS, tune.DEFAULT_EVAL_EVERY)
    assert tune_storage.GRACE_INTERVALS == 6  # --heartbeat's help says so


def test_data_and_model_may_come_from_the_config_file(study_env):
    (study_env / "base.toml").write_text(f'data = "{study_env / "toy.npz"}"\nmodel_type = "rnn-nade"\n')
    r = run("tune", "--config", "base.toml", "--space", "space.toml", "--trials", "1", "--epochs", "1",
            "--eval-every", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["study"] == "toy-rnn-nade"
    line = one_sentence_error(run("tune", "--space", "space.toml"), code=2)
    assert "--data" in line


# --- the storage -----------------------------------------------------------------------------


def test_storage_urls():
    from rnnrbm_cli.tune import display_url, storage_url

    assert storage_url(None, Path("/r/tune-x")) == "sqlite:////r/tune-x/study.db"
    assert storage_url("postgresql://me@db/optuna", Path("x")) == "postgresql+psycopg://me@db/optuna"
    assert storage_url("postgres://me@db:5433/o", Path("x")) == "postgresql+psycopg://me@db:5433/o"
    assert storage_url("postgresql+psycopg://me@db/o", Path("x")) == "postgresql+psycopg://me@db/o"
    assert display_url("postgresql+psycopg://me:secret@db/o") == "postgresql+psycopg://me:***@db/o"


def test_an_unreachable_storage_is_one_sentence_and_exit_1(study_env):
    line = one_sentence_error(tune("--storage", "postgresql://x@127.0.0.1:1/db", "--eval-every", "1"), code=1)
    assert "cannot reach the study storage postgresql+psycopg://x@127.0.0.1:1/db" in line
    assert not list((study_env / "runs").glob("*/trial-*"))


def test_a_storage_that_is_no_url_is_a_usage_error(study_env):
    line = one_sentence_error(tune("--storage", "not a url", "--eval-every", "1"), code=2)
    assert "is not a database URL" in line


# --- a study on SQLite -----------------------------------------------------------------------


def test_a_study_runs_its_trials_and_best_toml_reproduces_the_best(study_env):
    r = tune("--trials", "3", "--epochs", "2", "--eval-every", "1", "--study", "s", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    study_dir = study_env / "runs" / "tune-s"
    assert out["trials"] == {"complete": 3, "pruned": 0, "failed": 0, "running": 0, "cancelled": 0}
    assert out["ran"] == [0, 1, 2] and out["stopped"] == "trials"

    study = load(study_dir, "s")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    for t in trials:  # its own run directory, trained with the settings Optuna drew
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == (study_dir / f"trial-{t.number}").resolve()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["optim"]["lr"] == t.params["lr"] and config["model"]["n_hidden"] == t.params["n_hidden"]
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
        assert t.value == max(json.loads(line)["valid_ll"] for line in lines)  # the epoch best.pt holds
        assert t.intermediate_values == {1: json.loads(lines[0])["valid_ll"], 2: json.loads(lines[1])["valid_ll"]}
    best = max(trials, key=lambda t: t.value)
    assert out["best_trial"] == best.number and out["best_value"] == best.value
    assert out["best_params"] == best.params and out["run_dir"] == best.user_attrs["run_dir"]
    assert "Best trials of s" in r.stderr

    # best.toml: every setting, the data and the fixed ones too, as rnnrbm train reads them
    from rnnrbm_cli.config import merge_settings

    best_toml = study_dir / "best.toml"
    assert out["best_toml"] == str(Path("runs/tune-s/best.toml"))
    settings = merge_settings(config_file=best_toml)
    assert settings.data.data == str(study_env / "toy.npz")
    assert (settings.optim.lr, settings.model.n_hidden, settings.optim.k) == (best.params["lr"], best.params["n_hidden"], best.params["k"])
    assert (settings.optim.chunk, settings.eval.eval_frames, settings.eval.eval_every, settings.optim.epochs) == (12, 40, 1, 2)

    r = run("train", "--config", best_toml, "--run-dir", study_env / "again", "--epochs", "1")
    assert r.exit_code == 0, r.stderr
    assert first_metrics(study_env / "again") == first_metrics(Path(best.user_attrs["run_dir"]))


def test_the_same_command_continues_the_study(study_env):
    args = ("--epochs", "1", "--eval-every", "1", "--study", "s", "--json")
    r = tune("--trials", "2", *args)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["ran"] == [0, 1]
    r = tune("--trials", "3", *args)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["ran"] == [2]
    r = tune("--trials", "3", *args)  # the total is reached: no trial starts
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ran"] == [] and out["trials"]["complete"] == 3
    assert sorted(p.name for p in (study_env / "runs" / "tune-s").glob("trial-*")) == ["trial-0", "trial-1", "trial-2"]

    # another space or model is another study
    (study_env / "space.toml").write_text(SPACE.replace("high = 16", "high = 12"))
    line = one_sentence_error(tune("--trials", "4", *args), code=2)
    assert "another search space" in line
    line = one_sentence_error(tune("--trials", "4", "--model", "rnn-nade", *args), code=2)
    assert "another model_type" in line
    assert len(load(study_env / "runs" / "tune-s", "s").get_trials()) == 3


def test_timeout_starts_no_trial_after_it(study_env):
    r = tune("--trials", "5", "--epochs", "1", "--eval-every", "1", "--timeout", "0.001", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["stopped"] == "timeout" and out["ran"] == [] and out["best_toml"] is None


def test_a_poor_trial_is_pruned_and_its_run_stopped_cleanly(study_env, toy_npz):
    from rnnrbm_cli import rundir
    from rnnrbm_cli.tune import TuneCallbacks, base_settings, read_space
    from rnnrbm_cli.api import tune_model

    space = read_space("space.toml", "rnn-rbm")
    base = base_settings(flags={"data": "toy.npz", "epochs": 3, "eval_every": 1, "device": "cpu"}, space=space)
    study_dir = study_env / "runs" / "tune-p"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="p", storage=f"sqlite:///{study_dir / 'study.db'}", direction="maximize")
    good = {"n_hidden": 12, "n_recurrent": 6, "k": 1}
    study.enqueue_trial({"lr": 0.05, **good})
    study.enqueue_trial({"lr": 0.03, **good})
    study.enqueue_trial({"lr": 1e-6, **good})  # barely moves from its random start
    ended = []

    class Seen(TuneCallbacks):
        def on_trial_end(self, number, state, value, note):
            ended.append((number, state))

    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    result = tune_model(base, space, trials=3, study_name="p", pruner=pruner, callbacks=Seen())
    assert ended == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED")]
    assert result.counts["complete"] == 2 and result.counts["pruned"] == 1
    assert result.best.number in (0, 1)
    pruned = study_dir / "trial-2"
    assert len((pruned / "metrics.jsonl").read_text().splitlines()) == 1  # stopped after its first report
    assert len((study_dir / "trial-0" / "metrics.jsonl").read_text().splitlines()) == 3
    with rundir.RunLock(pruned):  # its lock was released
        pass


def test_a_diverging_trial_counts_as_pruned(study_env):
    from rnnrbm_cli.tune import base_settings, read_space
    from rnnrbm_cli.api import tune_model

    # 1e38: the steps overflow float32 parameters. (A rate of 1e9 diverged on one machine and
    # not on another: the model's cost then grows with the rate but stays finite.)
    (study_env / "space.toml").write_text(SPACE.replace("high = 0.1", "high = 1e38"))
    space = read_space("space.toml", "rnn-rbm")
    base = base_settings(flags={"data": "toy.npz", "epochs": 2, "eval_every": 1, "device": "cpu"}, space=space)
    study_dir = study_env / "runs" / "tune-d"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="d", storage=f"sqlite:///{study_dir / 'study.db'}", direction="maximize")
    study.enqueue_trial({"lr": 1e38, "n_hidden": 12, "n_recurrent": 6, "k": 1})
    result = tune_model(base, space, trials=1, study_name="d")
    assert result.counts["pruned"] == 1 and result.best is None and result.best_toml is None
    t = load(study_dir, "d").get_trials()[0]
    assert t.state.name == "PRUNED" and "diverged" in t.user_attrs["diverged"]


def test_an_rnn_nade_study_is_judged_by_its_exact_validation_ll(study_env):
    r = tune("--model", "rnn-nade", "--trials", "1", "--epochs", "1", "--eval-every", "1", "--study", "n", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    metrics = json.loads((Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    assert out["best_value"] == metrics["valid_monitor"]  # the exact LL of the whole validation split


def test_best_toml_round_trips_every_kind_of_value(toy_npz):
    from rnnrbm_cli.config import flatten, resolve_settings
    from rnnrbm_cli.tune import toml_text

    flat = resolve_settings({"data": 'od"d \\ naïve\tname.npz', "lr": 1e-05, "learn_u0": True, "momentum": 0.5,
                             "n_hidden": 7}).flat()
    flat.pop("run_dir")
    text = toml_text(flat, "a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n")
    back = resolve_settings(flatten(tomllib.loads(text))).flat()
    back.pop("run_dir")
    assert back == flat


# --- Ctrl+C: a real signal to a real process ---------------------------------------------------


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_for(path: Path, text: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {text!r}: {path.read_text() if path.exists() else ''}")
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in {path} after {seconds} s")


def _tune_process(cwd: Path, log: Path, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rnnrbm_cli", "tune", "--data", "toy.npz", "--space", "space.toml", "--json", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)


def test_ctrl_c_fails_the_running_trial_and_leaves_the_study_resumable(study_env):
    log = study_env / "stderr.txt"
    proc = _tune_process(study_env, log, "--study", "c", "--trials", "2", "--epochs", "100000", "--eval-every", "1000")
    try:
        _wait_for(log, "trial 0:", proc)
        time.sleep(1.0)  # inside the training loop
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log.read_text()
    out = json.loads(stdout)
    assert out["stopped"] == "interrupted" and out["trials"]["failed"] == 1 and out["trials"]["running"] == 0
    assert "Traceback" not in log.read_text()
    t = load(study_env / "runs" / "tune-c", "c").get_trials()[0]
    assert t.state.name == "FAIL" and "interrupted" in t.user_attrs
    assert (study_env / "runs" / "tune-c" / "trial-0" / "checkpoint.pt").exists()  # checkpointed, like train

    r = tune("--study", "c", "--trials", "1", "--epochs", "1", "--eval-every", "1", "--json")  # resumed
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ran"] == [1] and out["trials"]["complete"] == 1 and out["trials"]["failed"] == 1


# --- PostgreSQL, for real ----------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    candidates = []
    if shutil.which("initdb"):
        candidates.append(Path(os.path.realpath(shutil.which("initdb"))).parent)
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        candidates.append(Path(out))
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in candidates:
        if all((d / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (trust authentication), its files in a
    temporary folder; as root, the server runs as the unprivileged user postgres (or nobody),
    since initdb refuses root. Yields the URL base ``postgresql://postgres@127.0.0.1:PORT``."""
    pytest.importorskip("psycopg")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("needs the PostgreSQL server binaries (initdb, pg_ctl): install postgresql; none found on PATH, "
                    "by pg_config --bindir or in /usr/lib/postgresql/*/bin")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="rnnrbm-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(root)
            pytest.skip("running as root, and initdb refuses root: needs runuser to run it as an unprivileged user")
        for user in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(user)
                break
            except KeyError:
                continue
        else:
            shutil.rmtree(root)
            pytest.skip("running as root, and initdb refuses root: no postgres or nobody user to run it as")
        os.chown(root, entry.pw_uid, entry.pw_gid)
        prefix = [runuser, "-u", entry.pw_name, "--"]
    port = _free_port()
    data = root / "data"
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off -c max_connections=60"
    try:
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, text=True, timeout=120)
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w",
                        "-t", "60", "start"], check=True, capture_output=True, text=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL server here: {getattr(e, 'stderr', '') or e} {log}".strip())
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _new_database(base_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base_url}/{name}"


def _check_study(study, wanted: int) -> list:
    """Every finished trial ran once, in its own run directory; none is left RUNNING."""
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    done = finished(study)
    assert len(done) == wanted
    dirs = [t.user_attrs["run_dir"] for t in trials if "run_dir" in t.user_attrs]
    assert len(dirs) == len(set(dirs))  # no two trials share a run directory
    for t in done:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.name == f"trial-{t.number}"
        assert len((run_dir / "command.txt").read_text().splitlines()) == 1  # trained once
        assert json.loads((run_dir / "config.json").read_text())["optim"]["lr"] == t.params["lr"]
    return trials


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(postgres, study_env):
    url = _new_database(postgres, "two_workers")
    args = ("--storage", url, "--study", "w", "--trials", "6", "--epochs", "3", "--eval-every", "1", "--heartbeat", "2")
    procs = [_tune_process(study_env, study_env / f"w{i}.txt", *args) for i in range(2)]
    outs = []
    try:
        for i, proc in enumerate(procs):
            stdout, _ = proc.communicate(timeout=400)
            assert proc.returncode == 0, (study_env / f"w{i}.txt").read_text()
            outs.append(json.loads(stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    study = optuna.load_study(study_name="w", storage=url.replace("postgresql://", "postgresql+psycopg://"))
    trials = _check_study(study, 6)
    ran = [n for out in outs for n in out["ran"]]
    assert len(ran) == len(set(ran))  # no trial ran in both workers
    assert set(ran) >= {t.number for t in finished(study)}
    assert not [t for t in trials if t.state.name == "FAIL" and "cancelled" not in t.user_attrs]
    for out in outs:
        assert out["trials"]["complete"] + out["trials"]["pruned"] == 6


@pytest.mark.slow
def test_a_killed_worker_leaves_the_study_to_the_others(postgres, study_env):
    url = _new_database(postgres, "killed_worker")
    args = ("--storage", url, "--study", "k", "--trials", "4", "--epochs", "40", "--eval-every", "10",
            "--heartbeat", "2", "--pruner", "none")
    victim = _tune_process(study_env, study_env / "b.txt", *args)
    survivor = None
    try:
        _wait_for(study_env / "b.txt", "trial 0:", victim)
        survivor = _tune_process(study_env, study_env / "a.txt", *args)
        _wait_for(study_env / "b.txt", "epoch 10", victim)  # well inside its trial
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        stdout, _ = survivor.communicate(timeout=500)
    finally:
        for proc in (survivor, victim):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert survivor.returncode == 0, (study_env / "a.txt").read_text()
    storage = url.replace("postgresql://", "postgresql+psycopg://")
    trials = _check_study(optuna.load_study(study_name="k", storage=storage), 4)
    lost = [t for t in trials if t.state.name == "FAIL" and "cancelled" not in t.user_attrs]
    assert len(lost) == 1 and Path(lost[0].user_attrs["run_dir"]).is_dir()  # the victim's, failed by heartbeat
    assert json.loads(stdout)["trials"]["failed"] == 1

    # a rerun continues the study
    r = run("tune", "--data", "toy.npz", "--space", "space.toml", *args[:4], "--trials", "5", "--epochs", "2",
            "--eval-every", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["ran"]) == 1
    _check_study(optuna.load_study(study_name="k", storage=storage), 5)
