"""lib/track.py: --track tensorboard|wandb, a mirror of what a run already writes, for researchers who watch runs in
TensorBoard (event files in <run>/tb/) or W&B (offline, files in <run>/wandb/; `wandb sync` uploads them later).

Fed from the places that already write: every rounds.jsonl line (its numbers as scalars `<kind>/<field>`, at step =
its round; its tables as text), every heal step's stats (`heal/<stat>`, one step axis over the run's rounds) and
every samples.md section (`<kind>/samples`). The run folder stays the source of truth: nothing here is read back.
It imports nothing of the project, and its tracker only when started, so a run without --track needs neither.
"""
import json, math, os
from pathlib import Path

T = dict(kind="", w=None, step=0, last=("run", 0))  # the live tracker; step = heal steps so far; last = (kind, round)


def start(kind, run_dir, config):
    close()
    if not kind:
        return
    run_dir = Path(run_dir)
    if kind == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        w = SummaryWriter(log_dir=str(run_dir / "tb"))
    else:
        os.environ["WANDB_MODE"] = "offline"  # no account, no network
        import wandb
        w = wandb.init(dir=str(run_dir), name=run_dir.name, config=config, mode="offline")
        w.define_metric("*", step_metric="step")  # plot against our step (heal step / round), not W&B's call count
    T.update(kind=kind, w=w, step=steps_done(run_dir), last=("run", 0))
    text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```")


def steps_done(run_dir):
    """On --resume, heal steps continue after those of the rounds already on disk."""
    p = run_dir / "rounds.jsonl"
    lines = [json.loads(s) for s in p.read_text().splitlines() if s.strip()] if p.exists() else []
    return sum((x.get("heal") or {}).get("steps") or 0 for x in lines if x.get("kind") in ("round", "lam0"))


def scalars(d, prefix):
    """Every finite number of a line, nested dicts flattened (heal/kl_agg, nats/Care); bools as 0/1."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from scalars(v, f"{prefix}/{k}")
        elif isinstance(v, (int, float)) and math.isfinite(v) and k not in ("round", "seed"):
            yield f"{prefix}/{k}", float(v)


def table(rows):  # a list of dicts (dose_table, probes) as a markdown table
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return "\n".join([f"| {' | '.join(keys)} |", "|" + "---|" * len(keys)] +
                     [f"| {' | '.join(cell(r.get(k, '')) for k in keys)} |" for r in rows])


def line(obj):
    """One rounds.jsonl line (append_line calls this after writing it)."""
    if not T["w"]:
        return
    kind, step = obj.get("kind", "line"), int(obj.get("round", 0))
    T["last"] = (kind, step)
    log(dict(scalars(obj, kind)), step)
    for k, v in obj.items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            text(f"{kind}/{k}", table(v))
    if kind == "stop":
        text("stop/reason", str(obj.get("reason")))
    if T["kind"] == "tensorboard":
        T["w"].flush()  # a line is a finished stage: on disk now, as rounds.jsonl is, not at the next timed flush


def heal(k, stats, lr):
    """One optimizer step of a heal (loss, nll, kl_agg, barrier_active, ...) and its learning rate."""
    if not T["w"]:
        return
    T["step"] += 1
    log({f"heal/{key}": v for key, v in {**stats, "lr": lr, "round": k}.items() if math.isfinite(v)}, T["step"])


def text(tag, md):
    """Markdown at the step of the last line (a line's samples are written right after it); a tag without a
    '/' goes under that line's kind."""
    if not T["w"]:
        return
    kind, step = T["last"]
    tag = tag if "/" in tag else f"{kind}/{tag}"
    if T["kind"] == "tensorboard":
        T["w"].add_text(tag, md, step)
    else:
        import html, wandb
        T["w"].log({tag: wandb.Html(f"<pre>{html.escape(md)}</pre>"), "step": step})


def log(d, step):
    if T["kind"] == "tensorboard":
        for tag, v in d.items():
            T["w"].add_scalar(tag, v, step)
    else:  # W&B wants its own monotonic step: the x axis goes in as a field
        T["w"].log({**d, "step": step})


def close():
    if T["w"]:
        T["w"].close() if T["kind"] == "tensorboard" else T["w"].finish()
    T.update(kind="", w=None)
