"""The command line as a whole: every command's --help, a bad flag each, and the values the
CLI spells out (so that --help need not import torch) agreeing with the library's."""

from __future__ import annotations

import os

import pytest

from rnnrbm_cli import cli as cli_module

from conftest import one_sentence_error, run

COMMANDS = sorted(cli_module.cli.commands)


def test_the_commands_are_the_documented_ones():
    assert COMMANDS == ["datasets", "evaluate", "fetch", "plot", "prepare", "report", "sample", "train", "tune"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_a_runnable_example(command):
    r = run(command, "--help")
    assert r.exit_code == 0, r.stderr
    assert "Example:" in r.stdout and f"rnnrbm {command}" in r.stdout.split("Example:")[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_flag_is_a_usage_error(command):
    r = run(command, "--no-such-flag")
    assert r.exit_code == 2
    assert "No such option" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--backend", "jax"],
        ["train", "--epochs", "-1"],
        ["sample", "x.pt", "y.mid", "--backend", "jax"],
        ["evaluate", "x.pt", "--backend", "jax"],
        ["evaluate", "x.pt", "--split", "dev"],
        ["evaluate", "x.pt", "--method", "forward"],
        ["train", "--eval-method", "exact"],
        ["train", "--ema", "1"],
        ["plot", "x.mid", "--width", "3"],
        ["prepare", "nottingham", "--dt", "0"],
    ],
)
def test_a_bad_value_is_a_usage_error(args):
    r = run(*args)
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr


def test_the_cli_spells_the_library_values_exactly():
    from rnnrbm_cli import config, engines, evaluate, registry

    assert cli_module._BACKENDS == engines.BACKENDS
    assert cli_module._EVAL_METHODS == config.EVAL_METHODS
    assert cli_module._LL_METHODS == (*evaluate.METHODS, "both")
    assert cli_module._FORMS == registry.FORMS
    assert cli_module._MAX_K == config.MAX_K
    assert cli_module._MAX_EVAL["chains"] == config.MAX_EVAL_CHAINS and cli_module._MAX_EVAL["betas"] == config.MAX_EVAL_BETAS
    assert cli_module._EVAL_DEFAULTS == {
        "chains": evaluate.DEFAULT_CHAINS, "betas": evaluate.DEFAULT_BETAS,
        "samples": evaluate.DEFAULT_SAMPLES, "gibbs": evaluate.DEFAULT_GIBBS,
    }


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from rnnrbm_cli.cli import cli; cli(['train', '--help'], standalone_mode=False); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_an_error_sentence_with_brackets_prints_as_it_is(monkeypatch):
    """Library messages are text, not rich markup: a path such as "[/tmp/x]" must not break the printing."""
    from rnnrbm_cli import registry
    from rnnrbm_cli.errors import RnnrbmError

    from conftest import one_sentence_error

    def fail(*args, **kwargs):
        raise RnnrbmError("cannot read [/gloo/pair.cc:537] [bold]x[/bold].")

    monkeypatch.setattr(registry, "load_registry", fail)
    line = one_sentence_error(run("datasets"))
    assert line == "Error: cannot read [/gloo/pair.cc:537] [bold]x[/bold]."



@pytest.mark.parametrize("value", ["0", "x", "-2"])
def test_a_bad_thread_count_is_one_sentence(value):
    assert "--threads" in one_sentence_error(run("--threads", value, "datasets"), code=2)


def test_threads_sets_torchs_and_the_kernels_count_and_the_childrens(monkeypatch, tmp_path):
    import torch

    numba = pytest.importorskip("numba")
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
    for name in names:
        monkeypatch.setenv(name, "2")  # put back after the test (set_threads overwrites them)
    saved = torch.get_num_threads(), numba.get_num_threads()
    try:
        torch.set_num_threads(2)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        r = run("--threads", "1", "datasets", "--cache-dir", tmp_path)
        assert r.exit_code == 0, r.stderr
        assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
        assert [os.environ[n] for n in names] == ["1", "1", "1"]  # what child processes read
    finally:
        torch.set_num_threads(saved[0])
        numba.set_num_threads(saved[1])
