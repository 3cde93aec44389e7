#!/usr/bin/env bash
# The committed methods comparison: steer-heal, prompt-bake and online on the embedded model, default sizes
# (2 rounds), seeds 0 and 1 each. Resumable: a finished seed is skipped, a half-done one is resumed.
# Run from the repository root: bash results/methods/run.sh
set -euo pipefail
for s in 0 1; do
  for m in steer-heal prompt-bake online; do
    d=results/methods/$m/seed$s
    if [ -f "$d/report.md" ]; then continue; fi
    if [ -f "$d/config.json" ]; then python steer_heal.py --resume "$d"
    else python steer_heal.py --method "$m" --seed "$s" --out "results/methods/$m" --name "seed$s"; fi
  done
done
python report.py results/methods/steer-heal results/methods/prompt-bake results/methods/online --out results/methods
python plot.py results/methods/steer-heal results/methods/prompt-bake results/methods/online --out results/methods
