"""The modules the scripts lean on (imported as `from lib import runio`); the scripts one runs live one folder up.

runio      stdlib only: the log, a run's files (config.json, rounds.jsonl, completions), the run-folder lock, --script
track      optional mirrors of the log (tensorboard, wandb)
models     loading (the embedded GGUF, any HF causal LM), chat templates, layer bands, LoRA plumbing, the heal's loop
fast       the fast paths, each proven equal to the readable formula in steer_heal.py (ChunkedKL, prompt-KV reuse)
prompts    the built-in prompt pools (extraction contexts, generation prompts, held-out everyday prompts)
readers    the readers outside the model (sentiment, on-topic, degenerate share, ...): the READERS table
evidence   reading finished runs: paired noise, chance levels, the direction rule, the verdicts' words
cli        flags from a script's Config (one generic walk), --seeds, --resume, exit codes
line_cache the base/prompting lines a grid measures once

They import each other and, of the scripts, only eval_mfv (vignettes and statements) and report (the --seeds group's
report); a script imports them, never the other way round (tests/test_copy.py checks).
"""
