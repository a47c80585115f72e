#!/usr/bin/env bash
# The commands behind the README's Results table, one dataset and model at a time:
#   bash benchmarks/results.sh rnn-rbm nottingham       (or jsb-chorales; rnn-nade ...)
# Each trains the paper preset into runs/results-MODEL-DATA, then evaluates best.pt once on
# the test split with the evaluation defaults (RNN-RBM: forward AIS 100 x 1000 and, on the
# same frames, the conservative RAISE estimate), and checks on 200 test frames that the
# number of betas is enough (the two estimates at 1000 and 10,000 betas).
# Needs the data (rnnrbm fetch, or RNNRBM_MIRROR); an RNN-RBM on Nottingham takes about
# 25 minutes to train and about 40 minutes per 100 x 1000 pass over its 44,463 test frames on a
# 2-core CPU (200 hidden units).
set -euo pipefail
model=${1:-rnn-rbm}
data=${2:-nottingham}
run=runs/results-$model-$data
rnnrbm train --preset paper --model "$model" --data "$data" --run-dir "$run"
if [ "$model" = rnn-nade ] || [ "$model" = rnn ]; then  # exact likelihoods: no annealing to bracket
    rnnrbm evaluate "$run/best.pt" --split test --json | tee "$run/test.json"
    exit
fi
rnnrbm evaluate "$run/best.pt" --split test --method both --json | tee "$run/test.json"
for betas in 1000 10000; do
    rnnrbm evaluate "$run/best.pt" --split test --max-frames 200 --seed 7 --method both --betas "$betas" --json \
        | tee "$run/test-200-frames-$betas-betas.json"
done
