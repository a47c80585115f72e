"""Checkpoint loading: every kind of bad file is one RnnrbmError sentence, never a traceback."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from click.testing import CliRunner

from rnnrbm_cli.checkpoint import load_checkpoint, load_model, save_checkpoint
from rnnrbm_cli.cli import cli
from rnnrbm_cli.errors import RnnrbmError
from rnnrbm_cli.models.rbm import RNNRBM, ModelConfig


@pytest.mark.parametrize(
    "content, message",
    [
        (b"root:x:0:0:root:/root:/bin/bash\n", "truncated or not a PyTorch checkpoint"),
        (b"", "truncated or not a PyTorch checkpoint"),
        (bytes(range(256)) * 10, "corrupt or holds objects other than tensors"),
    ],
)
def test_garbage_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(RnnrbmError, match=message):
        load_checkpoint(path)
    r = CliRunner().invoke(cli, ["evaluate", str(path), "--data", "nottingham"])
    assert r.exit_code == 1 and "Traceback" not in r.output + r.stderr


def test_a_plain_torch_file_is_foreign(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(RnnrbmError, match="not an rnnrbm checkpoint"):
        load_checkpoint(path)


def test_round_trip(tmp_path):
    config = ModelConfig(n_hidden=7, n_recurrent=5, learn_u0=True)
    model = RNNRBM(config)
    save_checkpoint(tmp_path / "c.pt", {"model_config": asdict(config), "model_state": model.state_dict()})
    loaded, payload = load_model(tmp_path / "c.pt")
    assert loaded.config == config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def _payload() -> dict:
    config = ModelConfig(n_hidden=4, n_recurrent=3)
    return {"model_config": asdict(config), "model_state": RNNRBM(config).state_dict()}


@pytest.mark.parametrize(
    "error, said",
    [
        (OSError(28, "No space left on device"), "(No space left on device)"),
        (RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                      "data/3: file write failed"), "(PytorchStreamWriter failed writing file data/3: file write failed; "),
    ],
)
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error, said):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _payload())
    before = path.read_bytes()

    def failing(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(before[:100])  # half written, then the disk gives up
        raise error

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(RnnrbmError) as e:
        save_checkpoint(path, _payload())
    assert str(e.value).startswith(f"cannot write checkpoint {path} {said}")
    assert str(e.value).endswith("); the previous c.pt is kept unchanged.")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    with pytest.raises(RnnrbmError, match=r"; nothing was written\.$"):
        save_checkpoint(tmp_path / "new.pt", _payload())
    assert not (tmp_path / "new.pt").exists()


def test_an_unreadable_checkpoint_says_why(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _payload())

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(RnnrbmError, match=r"^cannot read checkpoint .*c.pt: Permission denied\.$"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_name_what_differs(tmp_path):
    config = ModelConfig(n_hidden=4, n_recurrent=3)
    state = RNNRBM(config).state_dict()
    state["W"] = torch.zeros(88, 5)
    state["bv"] = [0.0] * 88
    save_checkpoint(tmp_path / "c.pt", {"model_config": asdict(config), "model_state": state})
    with pytest.raises(RnnrbmError) as e:
        load_model(tmp_path / "c.pt")
    assert str(e.value).endswith("(not tensors: bv; W is (88, 5) where the config needs (88, 4)).")
    save_checkpoint(tmp_path / "d.pt", {"model_config": asdict(config), "model_state": [1, 2]})
    with pytest.raises(RnnrbmError, match=r"\(model_state is a list, not a dict of tensors\)\.$"):
        load_model(tmp_path / "d.pt")


def test_a_version_1_file_of_before_the_model_type_loads_as_the_rnn_rbm_with_its_settings(tmp_path):
    """What the first releases wrote: version 1, no model_type anywhere, settings flat in train_config."""
    from rnnrbm_cli.config import settings_from_checkpoint

    config = ModelConfig(n_hidden=4, n_recurrent=3)
    model = RNNRBM(config, torch.Generator().manual_seed(0))
    raw = {k: v for k, v in asdict(config).items() if k != "model_type"}
    path = tmp_path / "old.pt"
    torch.save({"format": "rnnrbm-checkpoint", "version": 1, "model_config": raw, "model_state": model.state_dict(),
                "train_config": {"lr": 0.01, "k": 5, "data": "jsb-chorales", "n_hidden": 4}}, path)
    loaded, payload = load_model(path)
    assert type(loaded) is RNNRBM and loaded.config == config
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    settings = settings_from_checkpoint(payload)
    assert (settings.optim.lr, settings.optim.k, settings.data.data, settings.model.model_type) == (
        0.01, 5, "jsb-chorales", "rnn-rbm")


def test_a_newer_version_is_refused_naming_the_versions_read(tmp_path):
    path = tmp_path / "new.pt"
    save_checkpoint(path, {"model_config": {}, "model_state": {}})
    payload = torch.load(path, weights_only=True)
    assert payload["version"] == 2
    torch.save({**payload, "version": 3}, path)
    with pytest.raises(RnnrbmError, match="of version 3; this rnnrbm reads versions 1 to 2"):
        load_checkpoint(path)
