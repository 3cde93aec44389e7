"""rivals.py: the rivals of steer-heal through the same loop, filters, readers and report: prompt baking and an
on-policy online method. A method is three stages (vector, collect, heal) with steer_heal's signatures; this file
writes them and adds their rows to steer_heal.METHODS, then runs steer_heal's main().

    python rivals.py --method prompt-bake     # any steer_heal.py flag works here too
    python rivals.py --method online --online-steps 12
    python rivals.py --resume results/<run>   # a rival's run resumes here, not in steer_heal.py

A rival of your own: copy this file, write its stages, add a row to METHODS below.
"""
import math
from pathlib import Path

import torch

import steer_heal
from steer_heal import (GEN_PROMPTS, Stop, adapter_off, chat, completion_logits, drop_counts, generate, heal,
                        heal_loss, kl_per_position, log, make_batch, mid_dose, new_adapter, projection, read_text,
                        regularised, score, seed_of, split_survivors, summary, train_adapter, unsteered_reference,
                        vector_stage)


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
    data = unsteered_reference(model, tok, cfg, k)
    g = torch.Generator().manual_seed(seed_of(cfg, k, "samples"))
    order = [GEN_PROMPTS[i] for i in torch.randperm(len(GEN_PROMPTS), generator=g)]
    items, n = [], cfg.probe_n
    for b in range(cfg.max_batches + 1):
        users = [order[(len(items) + i) % len(order)] for i in range(n)]
        got = generate(model, tok, [chat(tok, u, cfg.pos) for u in users], cfg, desc=f"teacher samples {b + 1}")
        for x, u in zip(got, users):
            x.update(user=u, dose=1.0, kappa=1.0, teacher_prompt=x["prompt"], prompt=chat(tok, u))
        items += data["sink"](score(model, tok, got, cfg, data["gate"]))
        n = cfg.gen_batch
        if sum(x["kept"] for x in items) >= cfg.min_train:
            break
    kept = [x for x in items if x["kept"]]
    if len(kept) < cfg.min_train:
        raise Stop(f"Starved: {len(kept)} of {len(items)} teacher samples survived the filters, fewer than --min-train "
                   f"{cfg.min_train} (dropped by {drop_counts(items)}). Loosen the filters or raise --max-batches.", code=3)
    return dict(data, kept=kept, items=items, teacher=dict(system=cfg.pos, title=f"round {k} teacher (persona prompt)"))


def distill_task(pm, tok, mb, dev):
    """prompt-bake's data term for micro-batch `mb`: per-token KL(teacher || student) over the completion,
    teacher = the same weights with the adapter off, reading the completion after its persona prompt
    (x["teacher_prompt"]); the student reads it after the plain prompt. Both batches hold the same completion
    ids row by row, so their completion positions line up one to one."""
    tb = make_batch(tok, [x["teacher_prompt"] for x in mb], [x["ids"] for x in mb], dev)
    with torch.no_grad(), pm.disable_adapter():
        teacher = completion_logits(pm, tb).float().log_softmax(-1)
    return "distill_kl", lambda logp: kl_per_position(logp, teacher, "fwd").mean()


def heal_distill(model, tok, vec, data, cfg, k, stash, lam):
    """prompt-bake: KL(teacher || student) on the teacher's samples + barrier."""
    val, train = split_survivors(data, cfg, k)
    return heal(model, tok, train, val, data["anchor"], cfg, k, stash, lam, task=distill_task)


# -------------------------------------------------------------------------------------------------
# online (the seed's "GRPO-style per batch"): on-policy policy gradient on the unsteered student

def collect_online(model, tok, vec, cfg, k, state):
    """online: only the unsteered reference here; heal_online generates as it trains."""
    data = unsteered_reference(model, tok, cfg, k)
    m = mid_dose(cfg, 1.0)
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
    with adapter_off(pm):  # one pass gives both the projection and the NLL the filters score
        proj, nll = read_text(pm, tok, [x["prompt"] for x in items], [x["ids"] for x in items], vec)
        score(pm, tok, items, cfg, gate, nll=nll)
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
    pm, ref_ctx, params, opt, sched, dev = new_adapter(model, cfg, k, stash, steps)
    g = torch.Generator().manual_seed(seed_of(cfg, k, "samples"))
    order = [GEN_PROMPTS[i] for i in torch.randperm(len(GEN_PROMPTS), generator=g)]
    ref = [x for x in data["ref"] if x["ids"]]
    with pm.disable_adapter():  # the reward's zero and unit: the starting model's own unsteered samples
        ref_proj = projection(pm, tok, [x["prompt"] for x in ref], [x["ids"] for x in ref], vec)
    spec = {}

    def step_losses(s, want_kl):
        users = [order[(s * B + i) % len(order)] for i in range(B) for _ in range(G)]
        pm.eval()
        items = generate(pm, tok, [chat(tok, u) for u in users], cfg, desc=f"online r{k} step {s + 1}")
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
            b = make_batch(tok, [x["prompt"] for x in mb], [x["ids"] for x in mb], dev)
            loss, st_ = heal_loss(pm, b, cfg, lam, ref_ctx, want_kl, pg_task(b, adv[idx]))
            return regularised(pm, tok, cfg, loss, st_, s, data["anchor"], spec, dev)
        return [lambda idx=live[i:i + cfg.train_batch]: thunk(idx) for i in range(0, len(live), cfg.train_batch)]

    hist, nonfinite, status = train_adapter(pm, cfg, k, steps, params, opt, sched, step_losses, f"online r{k}")
    data.update(kept=[x for x in data["items"] if x["kept"]], kappa=1.0)
    if status != "ok":
        return pm, dict(steps=steps, nonfinite=nonfinite, status=status)
    r = [x["reward"] for x in data["items"] if x["ids"]]  # an empty completion was never trained on
    return pm, summary(hist, steps=steps, lam=lam, tau=cfg.tau, nonfinite=nonfinite, status="ok",
                       reward=sum(r) / len(r) if r else math.nan)


METHODS = {  # --method -> (vector stage, collect stage, heal stage)
    "prompt-bake": (no_vector, collect_teacher, heal_distill),
    "online": (vector_stage, collect_online, heal_online),
}
steer_heal.METHODS.update(METHODS)

if __name__ == "__main__":
    steer_heal.main(doc=__doc__, script=Path(__file__).name)  # this file's --help, and its name in resume hints
