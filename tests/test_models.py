"""The model records: what the rest of the tool asks of a model type, and the proof that
moving the models into records changed nothing a user can see."""

from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import make_trainer

# sha256 (first 16 hex digits) of the model_state of checkpoint.pt after a short training run,
# taken with the code as it was before the models became records (commit d734955), on this CPU
# type. Floating-point results depend on the instruction set torch's and numba's kernels were
# built for, so the pin holds only on the CPU it was taken on; elsewhere the test says so.
PINNED_ON = {"torch_cpu": "AVX512", "numba_cpu": "znver5"}
PINNED = {
    # RNN-RBM, one epoch of each pretraining stage then two of fine-tuning, CD-1.
    "rbm-torch": "272fd88f13881e35",
    "rbm-numba": "feae52b549dae76b",
    # RNN-NADE, two epochs of exact maximum likelihood with Adam.
    "nade-torch": "8e9c51866a503f2d",
}
RUNS = {
    "rbm-torch": dict(backend="torch", pretrain_rbm_epochs=1, pretrain_rnn_epochs=1),
    "rbm-numba": dict(backend="numba", pretrain_rbm_epochs=1, pretrain_rnn_epochs=1),
    "nade-torch": dict(model_type="rnn-nade", backend="torch", optimizer="adam", lr=0.01),
}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def this_cpu() -> dict[str, str]:
    import llvmlite.binding

    return {"torch_cpu": torch.backends.cpu.get_cpu_capability(), "numba_cpu": llvmlite.binding.get_host_cpu_name()}


@pytest.mark.parametrize("run", sorted(PINNED))
def test_a_short_run_reproduces_the_checkpoint_pinned_before_the_move(toy_npz, tmp_path, run):
    if this_cpu() != PINNED_ON:
        pytest.skip(f"the digests were pinned on {PINNED_ON}; this machine is {this_cpu()}")
    make_trainer(toy_npz, tmp_path / run, epochs=2, **RUNS[run]).train()
    payload = torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)
    assert state_digest(payload["model_state"]) == PINNED[run]
