#!/usr/bin/env bash
# Methods on warmth (issue 21): steer-heal vs the persona prompt vs prompt-bake vs online, embedded SmolLM2-135M,
# default sizes (2 rounds), seeds 0 1 2, one run at a time on this workplace's 2-core CPU. online runs twice:
# --online-steps 2 (16 samples a step: 32 a round, the generation steer-heal's doses spend; tokens matched) and
# --online-steps 12 (the optimizer steps of a default steer-heal heal here: 3 epochs x 4 micro-batches of the
# ~25 training survivors; steps matched). The persona statements read
# deference to authority, not warmth: --statements none. The prompting line (the persona as system prompt) is
# measured in the steer-heal runs; the rivals skip it (--no-baselines): same seed, same code, the same line.
# Resumable: a finished run is skipped, a half-done one resumes. Run from the repository root.
set -euo pipefail
R=results/methods
COMMON=(--persona love --statements none)
one() {  # one(script, folder, seed, flags...)
  local script=$1 d=$R/$2/seed$3; shift 3
  if [ -f "$d/report.md" ]; then return; fi
  if [ -f "$d/config.json" ]; then python "$script" --resume "$d"
  else python "$script" "${COMMON[@]}" --seed "$(basename "$d" | tr -dc 0-9)" --out "$(dirname "$d")" --name "$(basename "$d")" "$@"; fi
}
for s in 0 1 2; do
  one steer_heal.py steer-heal "$s"
  one rivals.py prompt-bake "$s" --method prompt-bake --no-baselines
  one rivals.py online-2steps "$s" --method online --online-steps 2 --no-baselines
  one rivals.py online-12steps "$s" --method online --online-steps 12 --no-baselines
done
# the reports from the rows alone: each method's seeds, then steer-heal against each rival
for m in steer-heal prompt-bake online-2steps online-12steps; do python report.py $R/$m; done
python report_methods.py $R/steer-heal $R/prompt-bake $R/online-2steps --out $R/tokens_matched
python report_methods.py $R/steer-heal $R/online-12steps --out $R/steps_matched
python plot.py $R/steer-heal $R/prompt-bake $R/online-2steps $R/online-12steps --out $R
