"""The rivals through the same loop (--method prompt-bake | online): their losses on a tiny random Llama, and
whole quick runs that write the same files as the default method. Run: python -m pytest -q test_methods.py"""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rivals
from lib import runio
import steer_heal as sh
from conftest import needs_eval_data
from test_smoke import TINY_FLAGS, _peft, _randomise_lora


def _items(tok, users, system):
    ids = [[100, 200, 300, 400, 500], [7, 8, 9, 10]]
    return [dict(prompt=sh.chat(tok, u), teacher_prompt=sh.chat(tok, u, system), ids=c) for u, c in zip(users, ids)]


# --- prompt-bake ------------------------------------------------------------------------------------------

def test_distill_loss_is_zero_when_student_is_teacher_and_positive_otherwise(tiny):
    model, tok = tiny
    pm, cfg = _peft(model), sh.Config()
    users = ["Hi", "Should I obey?"]
    same = [dict(x, teacher_prompt=x["prompt"]) for x in _items(tok, users, sh.SEED_POS)]

    def loss(items):
        b = sh.make_batch(tok, [x["prompt"] for x in items], [x["ids"] for x in items], model.device)
        return sh.heal_loss(pm, b, cfg, 0.0, pm.disable_adapter, False, rivals.distill_task(pm, tok, items, model.device))[0]
    assert loss(same).item() == 0.0  # zero adapter, same prompt: the student is the teacher, exactly
    assert loss(_items(tok, users, sh.SEED_POS)).item() > 1e-4  # the persona prompt moves the teacher
    _randomise_lora(pm, 0, 0.3)
    # same prompt but a non-zero adapter: positive only because the teacher pass runs with the adapter OFF
    assert loss(same).item() > 1e-4


def test_distill_gradient_reaches_the_adapter(tiny):
    model, tok = tiny
    pm, cfg = _peft(model), sh.Config()
    _randomise_lora(pm, 1, 0.05)  # B = 0 would block every gradient to A
    items = _items(tok, ["Hi", "Should I obey?"], sh.SEED_POS)
    b = sh.make_batch(tok, [x["prompt"] for x in items], [x["ids"] for x in items], model.device)
    with torch.enable_grad():
        loss, st = sh.heal_loss(pm, b, cfg, 0.0, pm.disable_adapter, False, rivals.distill_task(pm, tok, items, model.device))
        loss.backward()
    assert "distill_kl" in st
    assert sum(p.grad.abs().sum().item() for n, p in pm.named_parameters() if "lora_" in n and p.grad is not None) > 0


# --- online -----------------------------------------------------------------------------------------------

def test_group_advantages_are_zero_mean_per_prompt_and_zero_for_ties():
    r = [1.0, 2.0, 3.0, 6.0, -1.0, -1.0, -1.0, -1.0, 0.1, 0.2, 0.3, 0.4]
    a = rivals.group_advantages(r, 4).view(3, 4)
    torch.testing.assert_close(a.sum(1), torch.zeros(3), atol=1e-5, rtol=0)
    assert (a[1] == 0).all()  # all-equal rewards: no preference at all
    assert a[0].argmax() == 3 and a[0].argmin() == 0 and a[0].std().item() == pytest.approx(1.0, rel=1e-5)
    assert (rivals.group_advantages([0.1 * 3] * 3 + [0.3] * 3, 3) == 0).all()  # rounding noise is not a preference


def test_online_update_with_equal_rewards_is_the_barrier_alone(tiny):
    model, tok = tiny
    pm, cfg = _peft(model), sh.Config(tau=0.0, kl_agg="rmse")
    _randomise_lora(pm, 2, 0.3)
    items = _items(tok, ["Hi", "Should I obey?"], sh.SEED_POS)
    b = sh.make_batch(tok, [x["prompt"] for x in items], [x["ids"] for x in items], model.device)
    grads = []
    for make in ("pg", "barrier"):
        pm.zero_grad(set_to_none=True)
        with torch.enable_grad():
            if make == "pg":  # all-equal rewards -> zero advantages
                loss, _ = sh.heal_loss(pm, b, cfg, 2.0, pm.disable_adapter, True,
                                       rivals.pg_task(b, rivals.group_advantages([0.5, 0.5], 2)))
            else:  # the barrier written out by hand: 2 * mean_seq relu(rmse_t KL_t - 0)
                logp = sh.completion_logits(pm, b).float().log_softmax(-1)
                with torch.no_grad(), pm.disable_adapter():
                    ref = sh.completion_logits(pm, b).float().log_softmax(-1)
                kl = sh.kl_per_position(logp, ref, "rev")
                loss = 2.0 * torch.stack([s.pow(2).mean().sqrt() for s in kl.split(b["lengths"])]).mean()
            loss.backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in pm.named_parameters() if "lora_" in n]))
    assert grads[0].abs().sum() > 0  # the barrier is active (tau = 0, a moved adapter)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_online_advantage_pushes_the_better_sample_up(tiny):
    model, tok = tiny
    pm, cfg = _peft(model), sh.Config()
    _randomise_lora(pm, 3, 0.05)
    items = _items(tok, ["Hi", "Hi"], sh.SEED_POS)
    b = sh.make_batch(tok, [x["prompt"] for x in items], [x["ids"] for x in items], model.device)
    adv = rivals.group_advantages([1.0, 0.0], 2)  # sample 0 better
    opt = torch.optim.SGD([p for n, p in pm.named_parameters() if "lora_" in n], lr=0.5)
    before = sh.completion_nll(pm, b).detach().split(b["lengths"])
    with torch.enable_grad():
        sh.heal_loss(pm, b, cfg, 0.0, pm.disable_adapter, False, rivals.pg_task(b, adv))[0].backward()
    opt.step()
    after = sh.completion_nll(pm, b).detach().split(b["lengths"])
    assert after[0].mean() < before[0].mean() and after[1].mean() > before[1].mean()


def test_group_advantages_below_the_noise_floor_are_zero():
    a = rivals.group_advantages([0.0, 1e-3, 2e-3, 1.0, 2.0, 3.0], 3, floor=0.1)
    assert (a[:3] == 0).all()  # rewards 1e-3 apart are noise: no full-size advantages for them
    assert a[3:].tolist() == pytest.approx([-1.0, 0.0, 1.0])


def _online_setup(tiny, monkeypatch, **kw):
    model, tok = tiny
    cfg = rivals.knobs(sh)(max_new_tokens=8, gen_batch=8, online_batch=2, online_group=4, online_steps=1, lr=0.01,
                           warmup=0.0, train_batch=8, rep_max=0.5, **kw)
    vec = {1: torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))}
    torch.manual_seed(0)
    ref = sh.generate(model, tok, [sh.chat(tok, u) for u in sh.GEN_PROMPTS[:8]], cfg)
    data = dict(ref=ref, gate=1e9, sink=lambda xs: xs, anchor=[], items=[])
    return model, tok, cfg, vec, data


def test_online_reward_is_the_trait_in_reference_units_minus_incoherence(tiny, monkeypatch):
    model, tok, cfg, vec, data = _online_setup(tiny, monkeypatch)
    ref = [x for x in data["ref"] if x["ids"]]
    proj = sh.projection(model, tok, [x["prompt"] for x in ref], [x["ids"] for x in ref], vec)
    items = rivals.online_reward(model, tok, [dict(x) for x in ref], vec, cfg, 1e9, proj)
    t = torch.tensor([x["trait"] for x in items])
    assert t.mean().item() == pytest.approx(0.0, abs=1e-5) and t.std().item() == pytest.approx(1.0, rel=1e-4)
    assert all(x["reward"] == pytest.approx(x["trait"] - x["incoherence"]) for x in items)
    gate = min(x["ppl_tail"] for x in items) * 0.5  # every sample now over the gate: charged its excess nats
    for x in rivals.online_reward(model, tok, [dict(x) for x in ref], vec, cfg, gate, proj):
        assert x["incoherence"] == pytest.approx(math.log(x["ppl_tail"] / gate) + (x["rep"] > cfg.rep_max), rel=1e-6)


def test_one_online_step_moves_the_unsteered_student_toward_higher_reward(tiny, monkeypatch):
    """On-policy: the samples come from the student without the hook, and one step raises the log-probability
    of its higher-reward samples: the importance-weighted mean reward of that step's samples under the updated
    student beats their plain mean (a flipped sign or a reward that ignores the trait fails it)."""
    model, tok, cfg, vec, data = _online_setup(tiny, monkeypatch)
    monkeypatch.setattr(sh, "steer", lambda *a, **k: pytest.fail("online must not steer the student"))
    before = [x for x in data["items"]]
    torch.manual_seed(1)
    pm, hs = rivals.heal_online(model, tok, vec, data, cfg, 0, sh.stash_base(model, cfg), lam=0.0)
    items = data["items"]
    assert hs["status"] == "ok" and hs["steps"] == 1 and not before and len(items) == 8 and all(x["ids"] for x in items)
    b = sh.make_batch(tok, [x["prompt"] for x in items], [x["ids"] for x in items], model.device)
    new = torch.stack([n.sum() for n in sh.completion_nll(pm, b).split(b["lengths"])])
    with pm.disable_adapter():
        old = torch.stack([n.sum() for n in sh.completion_nll(pm, b).split(b["lengths"])])
    w = torch.exp(old - new).view(-1, cfg.online_group)  # p_new / p_old of each whole sample, by prompt
    r = torch.tensor([x["reward"] for x in items]).view(-1, cfg.online_group)
    assert ((w * r).sum(1) / w.sum(1) > r.mean(1) + 1e-3).all()  # each prompt's samples: the better ones gained
    a = torch.tensor([x["adv"] for x in items])
    assert (a * (old - new)).sum() > 0  # log p rose where the advantage is positive


# --- whole runs -------------------------------------------------------------------------------------------

ONLINE = ["--online-batch", "2", "--online-group", "3", "--online-steps", "2"]


@needs_eval_data
@pytest.mark.parametrize("method", ["prompt-bake", "online"])
def test_quick_run_writes_the_same_files_and_names_the_method(method, tiny_dir, tmp_path):
    rivals.main(["--model", tiny_dir, "--out", str(tmp_path), "--name", "r", *TINY_FLAGS, "--method", method, *ONLINE])
    run = tmp_path / "r"
    for f in ["config.json", "rounds.jsonl", "completions_r0.jsonl", "samples.md", "report.md", "log.txt",
              "vector_r0.pt", "round_0/adapter/adapter_config.json", "round_0/adapter/adapter_model.safetensors"]:
        assert (run / f).exists(), f
    lines = sh.read_lines(run)
    assert [x["kind"] for x in lines] == ["base", "prompting", "steered", "round"]
    assert {x["method"] for x in lines} == {method}
    r = lines[-1]
    assert r["heal"]["status"] == "ok" and r["heal"]["steps"] >= 1 and r["generated"] >= 1
    assert r["generated_tokens"] >= r["generated"]
    if method == "online":
        assert r["generated"] == 12 and r["heal"]["steps"] == 2 and "pg" in r["heal"]
    else:
        assert "dose" not in lines[2]  # the teacher is the persona prompt, not a dose
        assert "distill_kl" in r["heal"] and r["kept"] >= 4
    model, tok, cfg = sh.load_run(run)  # plain peft adapters, baked on load
    assert cfg.method == method and sh.fingerprint(model, tok) == pytest.approx(r["fingerprint"], abs=2e-4)
    assert method in (run / "report.md").read_text()
    meta = json.loads((run / "config.json").read_text())
    assert meta["argv"][0] == "rivals.py" and meta["script"] == "steer_heal.py"  # the command, the pipeline it ran


def test_steer_heal_alone_names_the_script_that_runs_a_rival(capsys):
    """rivals.py registers nothing into the core when imported (this file imports it): its rows reach a pipeline
    only through rivals.main, so steer_heal.py alone refuses a rival and names the command that runs it."""
    assert set(sh.METHODS) == {"steer-heal"}
    with pytest.raises(SystemExit) as e:
        sh.main(["--method", "online", "--rounds", "1"])
    assert e.value.code == 2 and "python rivals.py --method online" in capsys.readouterr().out



ONLINE_KNOBS = {"online_batch", "online_group", "online_steps", "online_floor"}


def test_the_rivals_knobs_live_in_rivals_py(tmp_path, capsys):
    """online_* are rivals.knobs' fields (the script's Config extended), not the script's: rivals.py's flags only,
    each checked by its own rule; a steer-heal run's config.json from before the move (it holds them) still reads
    with the script's Config (Config.RETIRED), and a rival's keeps them with rivals.py's."""
    assert not ONLINE_KNOBS & {f.name for f in dataclasses.fields(sh.Config)}
    assert ONLINE_KNOBS <= {f.name for f in dataclasses.fields(rivals.knobs(sh))}
    with pytest.raises(SystemExit) as e:
        sh.main(["--online-steps", "3"])
    assert e.value.code == 2 and "--online-steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        rivals.main(["--method", "online", "--online-group", "1"])
    assert e.value.code == 2 and "--online-group 1: must be >= 2" in capsys.readouterr().out
    old = dict(dataclasses.asdict(sh.Config()), online_batch=2, online_group=3, online_steps=5, online_floor=0.2)
    (tmp_path / "config.json").write_text(json.dumps(dict(config=old, script="steer_heal.py", argv=["steer_heal.py"])))
    assert runio.load_config(tmp_path, sh.Config) == sh.Config()
    assert runio.load_config(tmp_path, rivals.knobs(sh)).online_group == 3


def test_rivals_py_help_is_its_own_and_flags_are_steer_heals():
    """python rivals.py --help describes rivals.py (its docstring), with steer_heal.py's flags."""
    out = subprocess.run([sys.executable, "rivals.py", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("rivals.py: the rivals of steer-heal") == 1 and "--online-steps" in out.stdout
    assert "steer_heal.py: " not in out.stdout.split("options:")[0]

@needs_eval_data
def test_resumed_online_run_matches_an_uninterrupted_one(tiny_dir, tmp_path):
    flags = ["--model", tiny_dir, "--out", str(tmp_path), *TINY_FLAGS, "--no-baselines", "--method", "online", *ONLINE]
    rivals.main(flags + ["--name", "full", "--rounds", "2"])
    rivals.main(flags + ["--name", "part", "--rounds", "1"])
    rivals.main(["--resume", str(tmp_path / "part"), "--rounds", "2"])
    a, b = sh.read_lines(tmp_path / "full"), sh.read_lines(tmp_path / "part")
    assert [x["kind"] for x in b if x["kind"] != "resume"] == [x["kind"] for x in a]
    assert [x["kind"] for x in b].count("resume") == 1  # the resume is on the record, once
    assert b[-1]["fingerprint"] == pytest.approx(a[-1]["fingerprint"], abs=1e-4)
    assert b[-1]["generated"] == a[-1]["generated"] and b[-1]["kept"] == a[-1]["kept"]
