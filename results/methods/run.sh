#!/usr/bin/env bash
# The methods grid (issue 21) is data now: results/methods/grid.json, run by the one driver of every grid (grid.py;
# docs/GRIDS.md). This runs it as before: resumable, one run at a time, then the reports. Any grid.py flag works,
# e.g. --launcher local --jobs 2, or --launcher slurm --partition gpu. Run from the repository root.
exec python grid.py results/methods/grid.json "$@"
