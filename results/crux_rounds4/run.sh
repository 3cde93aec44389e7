#!/usr/bin/env bash
# The crux over rounds (issue 21): warmth persona, embedded SmolLM2-135M, six settings x seeds 0 1 2, up to 4 rounds
# each (the ppl ceiling stops a run earlier), one steer_heal.py run at a time. Resumable: a finished run is skipped,
# a killed one resumes. Run from the repository root on this workplace's 2-core CPU. 2026-12-01: lam0/seed0 and
# the first rounds of rmse/seed0 ran with --threads 1 pinned to one core (taskset -c 0) while the other core ran
# tests, the rest with --threads 2 alone; 1 vs 2 threads can change float rounding (not checked to 4 decimals).
# 2026-12-02: a sixth setting, prev (--kl-ref prev: the barrier to the round's starting model), run alone with the
# same command plus --settings prev (the five others were done and are skipped).
# 2026-12-07: moved from results/crux_rounds/ to results/crux_rounds4/ (the 8-round grid took results/crux_rounds/);
# the runs' config.json and logs still name the old folder.
set -euo pipefail
python sweep.py --over-rounds --threads 2 --seeds 0 1 2 --rounds 4 --out results/crux_rounds4 -- --statements none
# the summary and the frontier figure from the rows alone:
python sweep.py --over-rounds --summarize --rounds 4 --out results/crux_rounds4
