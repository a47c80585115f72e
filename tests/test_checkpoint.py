"""Checkpoint loading: every kind of bad file is one RnnrbmError sentence, never a traceback."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from click.testing import CliRunner

from rnnrbm_cli.checkpoint import load_checkpoint, load_model, save_checkpoint
from rnnrbm_cli.cli import cli
from rnnrbm_cli.errors import RnnrbmError
from rnnrbm_cli.model import RNNRBM, ModelConfig


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
