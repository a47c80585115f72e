"""benchmarks/baselines.py: the independent-notes Markov baseline against a hand computation."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("baselines", Path(__file__).resolve().parents[1] / "benchmarks" / "baselines.py")
baselines = importlib.util.module_from_spec(spec)
spec.loader.exec_module(baselines)


def test_markov_notes_by_hand():
    # one key, train: 0 1 1 1 0 (the previous of the first frame: silence); by hand, the
    # pairs are 0->0, 0->1, 1->1, 1->1, 1->0: after off, 1 on of 2; after on, 2 on of 3
    train = [np.array([[0], [1], [1], [1], [0]], np.uint8)]
    p_on_off = (1 + 1) / (2 + 2)  # add-one smoothing
    p_on_on = (2 + 1) / (3 + 2)
    test = [np.array([[1], [1]], np.uint8)]
    r = baselines.markov_notes(train, test)
    expected = (math.log(p_on_off) + math.log(p_on_on)) / 2
    assert math.isclose(r["markov_ll"], expected)
    # copy the previous frame: silence then on -> TP 1, FN 1
    assert math.isclose(r["copy_acc"], 50.0)
