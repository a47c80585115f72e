"""benchmarks/seed_mean.py: the README's seed means, from run directories written by hand."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

spec = importlib.util.spec_from_file_location("seed_mean", Path(__file__).resolve().parents[1] / "benchmarks" / "seed_mean.py")
seed_mean = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seed_mean)


def write_run(run: Path, ll: float, raise_ll: float | None, valid: list[float]) -> None:
    run.mkdir(parents=True)
    test = {"log_likelihood": ll, "log_likelihood_stderr": 0.03, "frame_accuracy": 20.0, "frames": 4725}
    if raise_ll is not None:
        test |= {"raise_log_likelihood": raise_ll, "raise_log_likelihood_stderr": 0.04}
    (run / "test.json").write_text(json.dumps(test))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e + 1, "seconds": 2.0, "valid_ll": v, "valid_ll_seconds": 0.5}) + "\n" for e, v in enumerate(valid)))


def test_the_mean_the_spread_and_the_conservative_side(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs" / "results-rnn-rbm-jsb-chorales", -6.1, -6.2, [-7.0, -6.5, -6.6])
    write_run(tmp_path / "runs" / "results-rnn-rbm-jsb-chorales-seed1235", -6.3, -6.35, [-7.0, -6.4])
    write_run(tmp_path / "runs" / "results-rnn-nade-jsb-chorales", -5.2, None, [-5.3])  # another model: not read
    assert seed_mean.main(["rnn-rbm", "jsb-chorales"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "test -6.100 ± 0.030 (RAISE -6.200 ± 0.040)" in out[0] and "valid -6.500 at epoch 2 of 3  8 s" in out[0]
    assert "valid -6.400 at epoch 2 of 2  5 s" in out[1]
    assert out[2].startswith(f"mean of 2: -6.200, sd {statistics.stdev([-6.1, -6.3]):.3f}; ACC 20.0%")
    assert out[3] == f"RAISE (conservative) mean of 2: -6.275, sd {statistics.stdev([-6.2, -6.35]):.3f}"

    assert seed_mean.main(["rnn-nade", "jsb-chorales"]) == 0  # exact likelihoods: no RAISE line
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1] == "mean of 1: -5.200; ACC 20.0%"


def test_a_broken_test_json_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs" / "results-rnn-jsb-chorales", -8.5, None, [-8.6])
    (tmp_path / "runs" / "results-rnn-jsb-chorales" / "test.json").write_text("")  # an evaluation still running
    assert seed_mean.main(["rnn", "jsb-chorales"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("runs/results-rnn-jsb-chorales/test.json is not the output of rnnrbm evaluate --json")
    assert seed_mean.main(["rnn", "musedata"]) == 1 and "no finished" in capsys.readouterr().err
    write_run(tmp_path / "runs" / "results-rnn-rbm-jsb-chorales", -6.1, -6.2, [-6.5])
    test = json.loads((tmp_path / "runs" / "results-rnn-rbm-jsb-chorales" / "test.json").read_text())
    (tmp_path / "runs" / "results-rnn-rbm-jsb-chorales" / "test.json").write_text(json.dumps(test | {"raise_log_likelihood_stderr": None}))
    assert seed_mean.main(["rnn-rbm", "jsb-chorales"]) == 1
    assert "is not the output of rnnrbm evaluate --json" in capsys.readouterr().err
