"""The engine seam: which backend computes, chosen in one place, and the loop above it
behaving the same on both (optimisers, learning rates edited between steps)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rnnrbm_cli import engines
from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.config import resolve_settings
from rnnrbm_cli.errors import RnnrbmUsageError
from rnnrbm_cli.models.rbm import RNNRBM, ModelConfig
from rnnrbm_cli.train import Trainer

from conftest import make_trainer

PACKAGE = Path(__file__).resolve().parents[1] / "rnnrbm_cli"


def test_only_the_engines_import_the_compiled_kernels_and_read_the_switch():
    importers, readers = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(PACKAGE).as_posix()
        if re.search(r"import (cpu|nade)_kernels|(cpu|nade)_kernels import|rnnrbm_cli\.engines\.(cpu|nade)_kernels|import numba\b",
                     text):
            importers.append(name)
        if "RNNRBM_NO_NUMBA" in text:
            readers.append(name)
    assert importers == ["engines/cpu_kernels.py", "engines/nade_kernels.py", "engines/numba_nade.py", "engines/numba_rbm.py"]
    assert readers == ["engines/__init__.py"]


def test_models_and_loop_name_no_engine():
    for path in [*sorted((PACKAGE / "models").glob("*.py")), PACKAGE / "train.py"]:
        text = path.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"numba|cpu_kernels|backend ==|\.kernels\b", code), path.name
        if path.parent.name == "models":  # the loop asks the seam for an objective; a model never does
            assert "rnnrbm_cli.engines" not in code, path.name


def tiny_model(**kw) -> RNNRBM:
    return RNNRBM(ModelConfig(n_visible=88, n_hidden=16, n_recurrent=8, **kw), torch.Generator().manual_seed(0))


def chunks(binary: bool = True) -> ChunkedData:
    rng = np.random.default_rng(0)
    seqs = [(rng.random((20, 88)) < 0.05).astype(np.float32) for _ in range(4)]
    if not binary:
        seqs[0][3, 10] = 0.5
    return ChunkedData(seqs, 8, torch.device("cpu"))


def test_auto_is_numba_on_the_cpu_and_torch_when_switched_off_or_asked(monkeypatch):
    m = tiny_model()
    assert engines.resolve_backend("auto", m) == "numba"
    assert engines.resolve_backend("torch", m) == "torch"
    assert engines.resolve_backend("numba", m) == "numba"
    assert engines.objective_for(m, chunks(), k=1).backend == "numba"
    assert engines.sampler_for(m, "torch").backend == "torch"
    monkeypatch.setenv("RNNRBM_NO_NUMBA", "1")
    assert engines.resolve_backend("auto", m) == "torch"
    assert engines.resolve_backend("numba", m) == "numba", "an explicit request still gets the kernels"
    monkeypatch.setenv("RNNRBM_NO_NUMBA", "0")
    assert engines.resolve_backend("auto", m) == "numba"


def test_unusable_or_unknown_backends_are_usage_errors():
    m = tiny_model().double()
    assert engines.resolve_backend("auto", m) == "torch"
    with pytest.raises(RnnrbmUsageError, match="float32 models on the CPU"):
        engines.resolve_backend("numba", m)
    with pytest.raises(RnnrbmUsageError, match="backend must be one of"):
        engines.resolve_backend("jax", tiny_model())
    with pytest.raises(RnnrbmUsageError, match="backend must be auto, torch or numba"):
        resolve_settings({"backend": "jax"})


def test_a_model_whose_kernel_table_would_be_too_large_runs_on_torch():
    # the compiled Gibbs steps keep 32 floats per weight (the subset sums of W^T): bounded
    big = RNNRBM(ModelConfig(n_visible=88, n_hidden=8000, n_recurrent=4))
    assert engines.resolve_backend("auto", big) == "torch"
    with pytest.raises(RnnrbmUsageError, match=r"subset sums would take 85\.9 MiB for 8000 hidden units \(at most 64 MiB\)"):
        engines.resolve_backend("numba", big)
    assert engines.resolve_backend("auto", RNNRBM(ModelConfig(n_visible=88, n_hidden=5000, n_recurrent=4))) == "numba"


def test_non_binary_data_falls_back_to_torch_or_is_refused(tmp_path):
    # Prepared files are always 0/1 (load_prepared checks); data handed over directly may not be.
    data = chunks(binary=False)
    assert engines.objective_for(tiny_model(), data, k=1).backend == "torch"
    with pytest.raises(RnnrbmUsageError, match="other than 0 and 1"):
        engines.objective_for(tiny_model(), data, k=1, backend="numba")
    rng = np.random.default_rng(0)
    seqs = [(rng.random((20, 88)) < 0.05).astype(np.float32) for _ in range(4)]
    seqs[0][3, 10] = 0.5
    prepared = SimpleNamespace(meta={}, splits={"train": seqs, "valid": seqs[:1]})
    settings = resolve_settings({"n_hidden": 16, "n_recurrent": 8, "device": "cpu", "run_dir": str(tmp_path)})
    assert Trainer(settings, torch.device("cpu"), prepared).objective.backend == "torch"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_a_learning_rate_edited_in_param_groups_takes_effect(toy_npz, tmp_path, backend):
    # Three runs from the same start: lr 0.05 throughout; lr 0.05 then set to 0 after the
    # first update (nothing may move after it); and lr 0.05 then 0.5 (it must move further).
    from rnnrbm_cli.train import Callbacks

    class SetLR(Callbacks):
        def __init__(self, trainer, lr):
            self.trainer, self.lr = trainer, lr

        def on_update(self, epoch, update, n_updates):
            if update == 1:
                self.snapshot = {k: v.clone() for k, v in self.trainer.model.state_dict().items()}
                for group in self.trainer.optimizer.param_groups:
                    group["lr"] = self.lr

    def run(name, lr):
        t = make_trainer(toy_npz, tmp_path / name, epochs=1, backend=backend)
        t.callbacks = SetLR(t, lr)
        t.train()
        return t

    frozen = run("frozen", 0.0)
    assert frozen.objective.backend == backend
    for k, v in frozen.model.state_dict().items():
        assert torch.equal(v, frozen.callbacks.snapshot[k]), f"{k} moved with lr 0 on {backend}"
    base, fast = run("base", 0.05), run("fast", 0.5)
    moved = lambda t: sum(float((v - t.callbacks.snapshot[k]).abs().sum()) for k, v in t.model.state_dict().items())  # noqa: E731
    assert moved(fast) > 1.5 * moved(base) > 0
