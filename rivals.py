"""rivals.py: the rivals of steer-heal through the same loop, filters, readers and report: prompt baking and an
on-policy online method. A method is three stages (vector, collect, heal) with the script's signatures; this file
writes them, and runs the script's main() with its METHODS and these rows (rival_rows).

    python rivals.py --method prompt-bake     # any steer_heal.py flag works here too
    python rivals.py --method online --online-steps 12
    python rivals.py --resume results/<run>   # a rival's run resumes here, not in steer_heal.py
    python rivals.py --script my_idea.py --method online   # the rivals inside your copy of steer_heal.py

--script FILE: the experiment file whose pipeline, Config and functions the rivals run (default steer_heal.py);
a run made with --script resumes with the same --script. A rival of your own: write its stages (calling sh.*,
the script's functions), add its row to rival_rows below and its knobs to knobs() (docs/COPYING.md).
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lib import runio
import steer_heal as sh  # the script the stages call; rival_rows() points it at the one given by --script
from lib.runio import Stop, log


def knobs(script):
    """The script's Config plus the rivals' own knobs: rivals.py's flags (its --help), saved in a rival's config.json,
    read and checked as the script's are (the type and the rule on each line). Built for the script main() loads."""
    @dataclass
    class Config(script.Config):
        # online method (--method online): the loop per batch instead of per round
        online_batch: int = 4  # prompts per online step [>= 1]
        online_group: int = 4  # samples per prompt; advantages are relative within a prompt's group (GRPO) [>= 2]
        online_steps: int = 12  # optimizer steps per online round (12 = a default steer-heal heal: 3 epochs x 4 micro-batches of ~25 survivors) [>= 1]
        online_floor: float = 0.1  # a group whose rewards spread less than this (std, reward units) gets no advantage [>= 0]
    return Config


# -------------------------------------------------------------------------------------------------
# prompt-bake (Bhargava et al. 2024, arXiv 2409.13697; iterated = their "prompt pursuit"): distil the
# persona-prompted model into a LoRA on its own samples, once per round

def no_vector(model, tok, cfg, k, state):
    """prompt-bake distils the persona prompt itself: no vector."""
    return None, {}


def collect_teacher(model, tok, vec, cfg, k, state):
    """prompt-bake: the teacher's own samples (the current model with the persona as system prompt), with
    steer-heal's budget (a probe_n batch, then gen_batch top-ups until min_train survive, at most
    max_batches) and the same filters, scored as answers to the plain prompt the student will see.
    Recorded as dose 1.0 (the whole persona prompt) beside the unsteered dose 0."""
    data = sh.unsteered_reference(model, tok, cfg, k, state)
    g = torch.Generator().manual_seed(sh.seed_of(cfg, k, "samples"))
    order = [sh.GEN_PROMPTS[i] for i in torch.randperm(len(sh.GEN_PROMPTS), generator=g)]
    items, n = [], cfg.probe_n
    for b in range(cfg.max_batches + 1):
        users = [order[(len(items) + i) % len(order)] for i in range(n)]
        got = sh.generate(model, tok, [sh.chat(tok, u, cfg.pos) for u in users], cfg, desc=f"teacher samples {b + 1}")
        for x, u in zip(got, users):
            x.update(user=u, dose=1.0, kappa=1.0, teacher_prompt=x["prompt"], prompt=sh.chat(tok, u))
        items += data["sink"](sh.score(model, tok, got, cfg, data["gate"]))
        n = cfg.gen_batch
        if sum(x["kept"] for x in items) >= cfg.min_train:
            break
    kept = [x for x in items if x["kept"]]
    if len(kept) < cfg.min_train:
        raise Stop(f"Starved: {len(kept)} of {len(items)} teacher samples survived the filters, fewer than --min-train "
                   f"{cfg.min_train} (dropped by {sh.drop_counts(items)}). Loosen the filters or raise --max-batches.",
                   code=3)
    return dict(data, kept=kept, items=items, teacher=dict(system=cfg.pos, title=f"round {k} teacher (persona prompt)"))


def distill_task(pm, tok, mb, dev):
    """prompt-bake's data term for micro-batch `mb`: per-token KL(teacher || student) over the completion,
    teacher = the same weights with the adapter off, reading the completion after its persona prompt
    (x["teacher_prompt"]); the student reads it after the plain prompt. Both batches hold the same completion
    ids row by row, so their completion positions line up one to one."""
    tb = sh.make_batch(tok, [x["teacher_prompt"] for x in mb], [x["ids"] for x in mb], dev)
    with torch.no_grad(), pm.disable_adapter():
        teacher = sh.completion_logits(pm, tb).float().log_softmax(-1)
    return "distill_kl", lambda logp: sh.kl_per_position(logp, teacher, "fwd").mean()


def heal_distill(model, tok, vec, data, cfg, k, stash, lam):
    """prompt-bake: KL(teacher || student) on the teacher's samples + barrier."""
    val, train = sh.split_survivors(data, cfg, k)
    return sh.heal(model, tok, train, val, data["anchor"], cfg, k, stash, lam, task=distill_task)


# -------------------------------------------------------------------------------------------------
# online (the seed's "GRPO-style per batch"): on-policy policy gradient on the unsteered student

def collect_online(model, tok, vec, cfg, k, state):
    """online: only the unsteered reference here; heal_online generates as it trains."""
    data = sh.unsteered_reference(model, tok, cfg, k, state)
    m = sh.mid_dose(cfg, 1.0)
    return dict(data, teacher=dict(vectors=vec, coeff=m, dose=m, title=f"round {k} steered (dose {m:.3f}, before healing)"))


def group_advantages(rewards, group, floor=1e-6):
    """GRPO: (r - mean) / std within each consecutive group of `group` samples (one prompt's); 0 where a
    group's rewards spread less than `floor` (differences that small are noise: no push, only the barrier)."""
    r = torch.as_tensor(rewards, dtype=torch.float32).view(-1, group)
    sd = r.std(1, keepdim=True)
    return torch.where(sd > floor, (r - r.mean(1, keepdim=True)) / sd.clamp_min(1e-6), torch.zeros_like(r)).view(-1)


def pg_task(b, adv):
    """online's data term: -mean over completion tokens of A(sequence) * log p(token), no hook on the student
    (like the NLL of steer-heal, it learns to write the steered text unsteered; the advantage decides which)."""
    a = torch.repeat_interleave(adv.to(b["ids"].device), torch.tensor(b["lengths"], device=b["ids"].device))
    return "pg", lambda logp: -(a * logp.gather(1, b["tgt"][b["pred"]][:, None])[:, 0]).mean()


def online_reward(pm, tok, items, vec, cfg, gate, ref_proj):
    """online's reward per sample, read by this round's STARTING model (adapter off: it stays put while the
    student moves, so the student cannot raise its reward by moving its own reader): the trait = the sample's
    states projected on the round's vector, in standard deviations of the unsteered reference samples' projections
    (0 = an average unsteered answer), minus the incoherence the filters measure: the tail NLL beyond the ppl
    gate, in nats, plus 1 for a loop (repetition > --rep-max). Narrating the persona is not penalised (it is
    on-trait text; the filters' narration rule is for steer-heal's training data). Sets x["reward"]."""
    with sh.adapter_off(pm):  # one pass gives both the projection and the NLL the filters score
        proj, nll = sh.read_text(pm, tok, [x["prompt"] for x in items], [x["ids"] for x in items], vec)
        sh.score(pm, tok, items, cfg, gate, nll=nll)
    mu = sum(ref_proj) / len(ref_proj)
    sd = max(1e-6, (sum((p - mu) ** 2 for p in ref_proj) / max(1, len(ref_proj) - 1)) ** 0.5)
    for x, p in zip(items, proj):
        x["trait"] = (p - mu) / sd
        x["incoherence"] = max(0.0, math.log(x["ppl_tail"] / gate)) + float(x["rep"] > cfg.rep_max)
        x["reward"] = x["trait"] - x["incoherence"] if x["ids"] else -math.inf
    return items


@torch.enable_grad()
def heal_online(model, tok, vec, data, cfg, k, stash, lam):
    """online (the seed's "GRPO-style per batch", as an on-policy policy gradient): each of --online-steps steps
    samples --online-batch prompts x --online-group completions from the CURRENT student, unsteered (adapter on,
    no hook: the policy being trained is the one sampled, so one step per batch needs no importance ratio; top-p
    truncation aside); reward = online_reward() (trait by the round's vector under the frozen starting model,
    minus incoherence); A = group-relative advantages, 0 for a group whose rewards spread less than --online-floor;
    loss = -mean over completion tokens of A * log p + the same KL barrier as steer-heal. The vector is never
    added to the student: it only defines the reward. Then bake as steer-heal does."""
    B, G, steps = cfg.online_batch, cfg.online_group, cfg.online_steps
    pm, ref_ctx, params, opt, sched, dev = sh.new_adapter(model, cfg, k, stash, steps)
    g = torch.Generator().manual_seed(sh.seed_of(cfg, k, "samples"))
    order = [sh.GEN_PROMPTS[i] for i in torch.randperm(len(sh.GEN_PROMPTS), generator=g)]
    ref = [x for x in data["ref"] if x["ids"]]
    with pm.disable_adapter():  # the reward's zero and unit: the starting model's own unsteered samples
        ref_proj = sh.projection(pm, tok, [x["prompt"] for x in ref], [x["ids"] for x in ref], vec)
    spec = {}

    def step_losses(s, want_kl):
        users = [order[(s * B + i) % len(order)] for i in range(B) for _ in range(G)]
        pm.eval()
        items = sh.generate(pm, tok, [sh.chat(tok, u) for u in users], cfg, desc=f"online r{k} step {s + 1}")
        for x, u in zip(items, users):
            x.update(user=u, dose=0.0, kappa=1.0)
        data["sink"](online_reward(pm, tok, items, vec, cfg, data["gate"], ref_proj))
        pm.train()
        data["items"] += items
        live = [i for i, x in enumerate(items) if x["ids"]]  # an empty completion has no token to push
        rewards = [x["reward"] if x["ids"] else min((items[i]["reward"] for i in live), default=0.0) for x in items]
        adv = group_advantages(rewards, G, cfg.online_floor)
        for x, a in zip(items, adv.tolist()):
            x["adv"] = a
        # the trait's zero is the reference samples' mean, on other prompts: a step's mean carries their prompts'
        # offset (measured on the embedded model: 0.8 sd between two prompt sets of its own samples). The
        # advantages compare samples of one prompt, so training never sees it; the logged level does.
        log(f"  online r{k} step {s + 1}/{steps}: reward {sum(rewards) / len(rewards):+.3f} (trait "
            f"{sum(x['trait'] for x in items) / len(items):+.3f} sd vs the reference prompts, incoherence "
            f"{sum(x['incoherence'] for x in items) / len(items):.3f}), kept by the filters "
            f"{sum(x['kept'] for x in items) / len(items):.0%}, {int((adv != 0).sum())}/{len(adv)} non-zero advantages")

        def thunk(idx):
            mb = [items[i] for i in idx]
            b = sh.make_batch(tok, [x["prompt"] for x in mb], [x["ids"] for x in mb], dev)
            loss, st_ = sh.heal_loss(pm, b, cfg, lam, ref_ctx, want_kl, pg_task(b, adv[idx]))
            return sh.regularised(pm, tok, cfg, loss, st_, s, data["anchor"], spec, dev)
        return [lambda idx=live[i:i + cfg.train_batch]: thunk(idx) for i in range(0, len(live), cfg.train_batch)]

    hist, nonfinite, status = sh.train_adapter(pm, cfg, k, steps, params, opt, sched, step_losses, f"online r{k}")
    data.update(kept=[x for x in data["items"] if x["kept"]], kappa=1.0)
    if status != "ok":
        return pm, dict(steps=steps, nonfinite=nonfinite, status=status)
    r = [x["reward"] for x in data["items"] if x["ids"]]  # an empty completion was never trained on
    return pm, sh.summary(hist, steps=steps, lam=lam, tau=cfg.tau, nonfinite=nonfinite, status="ok",
                       reward=sum(r) / len(r) if r else math.nan)


def rival_rows(script):
    """The rivals' rows for `script`'s pipeline (steer_heal or a copy of it, loaded by runio.load_script): their
    stages call that script's functions from then on. Nothing is added to the script's own METHODS."""
    global sh
    sh = script
    return {  # --method -> (vector stage, collect stage, heal stage)
        "prompt-bake": (no_vector, collect_teacher, heal_distill),
        "online": (script.vector_stage, collect_online, heal_online),
    }


def main(argv=None):
    """--script FILE (default steer_heal.py) picks the experiment; every other flag is that script's."""
    argv, path = list(sys.argv[1:] if argv is None else argv), "steer_heal.py"
    for i, a in enumerate(argv):  # taken out here: the script's own parser does not know it
        if a == "--script":
            path, argv = (argv[i + 1:] or [""])[0], argv[:i] + argv[i + 2:]
            break
        if a.startswith("--script="):
            path, argv = a.split("=", 1)[1], argv[:i] + argv[i + 1:]
            break
    try:
        script = runio.load_script(path)
    except Stop as e:
        print(f"rivals: {e}")
        sys.exit(e.code)
    default = Path(script.__file__).resolve() == Path(runio.__file__).resolve().parent / "steer_heal.py"
    script.main(argv, doc=__doc__, script="rivals.py" + ("" if default else f" --script {path}"),
                methods={**script.METHODS, **rival_rows(script)}, config=knobs(script))  # its --help: this docstring


if __name__ == "__main__":
    main()
