"""export.py, --vector, the all-linear LoRA default on other architectures, and a bad value for every Config
field. Tiny random models built here (4 layers, hidden 64) with the embedded model's tokenizer.
Run: python -m pytest -q test_export.py"""
import dataclasses, json, typing

import pytest
import torch

import export
from lib import cli
from lib import models
import steer_heal as sh
from test_smoke import TINY_FLAGS

# the linear layers of one decoder block, per architecture: what `all-linear` must wrap
LINEARS = {"llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
           "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
           "gemma2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
           "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}  # fused: Llama's names miss them


from conftest import build_tiny, needs_eval_data, skip_without_eval_data  # noqa: E402  (shared helpers)


@pytest.fixture(scope="module")
def run2(tiny_dir, tmp_path_factory):
    """A finished 2-round run on the tiny Llama."""
    skip_without_eval_data()
    out = tmp_path_factory.mktemp("runs")
    sh.main(["--model", tiny_dir, "--out", str(out), "--name", "r2", *TINY_FLAGS, "--rounds", "2", "--no-baselines"])
    assert sh.completed_rounds(out / "r2") == [0, 1]
    return out / "r2"


@pytest.fixture(scope="module")
def exported(run2, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    export.main([str(run2), str(out)])
    return out


def last_logits(model, tok, text="What makes a good leader?"):
    enc = tok([sh.chat(tok, text)], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**enc).logits[0].float()


def exits(argv):
    with pytest.raises(SystemExit) as e:
        sh.main(argv)
    return e.value.code


# --- export ---------------------------------------------------------------------------------------------

def test_export_is_a_plain_folder_with_the_runs_logits_and_a_card(run2, exported, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for f in ["config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json", "README.md"]:
        assert (exported / f).exists(), f
    assert not list(exported.glob("adapter*")) and not list(exported.glob("*.tmp*"))
    plain = AutoModelForCausalLM.from_pretrained(exported).eval()
    tok = AutoTokenizer.from_pretrained(exported)
    assert tok.chat_template  # the chat model stays a chat model
    want, wtok, _ = sh.load_run(run2)
    torch.testing.assert_close(last_logits(plain, tok), last_logits(want, wtok), atol=1e-5, rtol=1e-5)
    # --round 0: only round 0 merged, which is a different model from the end of the run
    r0 = export.export(run2, tmp_path / "r0", upto_round=0)
    first = last_logits(AutoModelForCausalLM.from_pretrained(r0).eval(), tok)
    torch.testing.assert_close(first, last_logits(sh.load_run(run2, 0)[0], wtok), atol=1e-5, rtol=1e-5)
    assert (first - last_logits(plain, tok)).abs().max() > 1e-3
    # the card: the run's command, its persona, the rounds merged, and the last round's numbers
    card = (exported / "README.md").read_text()
    line = [x for x in sh.read_lines(run2) if x["kind"] == "round"][-1]
    assert "--rounds 2 --no-baselines" in card and sh.WARM in card
    assert "rounds merged**: [0, 1]" in card and "round 1 (healed, unsteered)" in card
    assert f"| `ppl_base` | {line['ppl_base']:.4g} |" in card
    assert "rounds merged**: [0]" in (r0 / "README.md").read_text()


def test_export_refuses_bad_input_and_leaves_nothing(run2, exported, tmp_path, capsys):
    for argv in ([str(run2), str(tmp_path / "a"), "--round", "7"], [str(tmp_path), str(tmp_path / "b")],
                 [str(run2), str(exported)]):  # a round that never ran, not a run folder, OUT occupied
        with pytest.raises(SystemExit) as e:
            export.main(argv)
        assert e.value.code == 2 and capsys.readouterr().out.startswith("export: ")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert (exported / "README.md").exists()  # the occupied OUT is untouched


def test_vectors_are_written_with_metadata_and_as_llama_cpp_gguf(run2, exported):
    from gguf import GGUFReader, GGMLQuantizationType
    from safetensors.torch import load_file
    lines = sh.read_lines(run2)
    for j in (0, 1):
        vec = torch.load(run2 / f"vector_r{j}.pt")
        layers = sorted(vec)
        assert layers == [1, 2]  # the default band on 4 blocks, last block excluded
        st = load_file(str(exported / "vectors" / f"vector_r{j}.safetensors"))
        assert sorted(st) == [f"direction.{l}" for l in layers]
        for l in layers:
            torch.testing.assert_close(st[f"direction.{l}"], vec[l], atol=0, rtol=0)
        meta = json.loads((exported / "vectors" / f"vector_r{j}.json").read_text())
        rnd = next(x for x in lines if x["kind"] == "round" and x["round"] == j)
        assert meta["layers"] == layers and meta["mode"] == "add" and "output" in meta["hook_point"]
        assert meta["model_type"] == "llama" and meta["hidden_size"] == 64 and meta["n_contexts"] == 4
        assert meta["persona"] == {"pos": sh.WARM, "neg": sh.COLD}  # the default persona, love
        assert meta["doses"] == rnd["doses"] and meta["kappa"] == rnd["kappa"]
        assert meta["norms"] == {str(l): pytest.approx(vec[l].norm().item(), abs=1e-4) for l in layers}
        r = GGUFReader(str(exported / "vectors" / f"vector_r{j}.gguf"))
        assert [t.name for t in r.tensors] == [f"direction.{l}" for l in layers]
        for t, l in zip(r.tensors, layers):
            assert t.tensor_type == GGMLQuantizationType.F32 and list(t.shape) == [64]
            torch.testing.assert_close(torch.from_numpy(t.data.copy()), vec[l], atol=0, rtol=0)
        assert r.fields["general.architecture"].contents() == "controlvector"
        assert r.fields["controlvector.model_hint"].contents() == "llama"
        assert r.fields["controlvector.layer_count"].contents() == len(layers)


def test_gguf_numbering_is_llama_cpps(tiny_dir, tmp_path):
    """llama.cpp adds direction.<il> to the output of decoder block il (0-based) and refuses direction.0.
    Applied that way, the GGUF must steer exactly as our hook does; one block off must not."""
    from gguf import GGUFReader
    model, tok = sh.load_model(tiny_dir)
    g = torch.Generator().manual_seed(0)
    vec = {0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g), 2: torch.randn(64, generator=g)}
    assert export.write_gguf(vec, tmp_path / "v.gguf", "llama") == [1, 2]  # block 0 cannot be exported
    r = GGUFReader(str(tmp_path / "v.gguf"))
    assert r.fields["controlvector.layer_count"].contents() == 2

    def llama_cpp_style(shift):  # add each direction.<il> to block (il + shift)'s output
        blocks = sh.decoder_layers(model)
        add = lambda v: lambda m, a, o: (o[0] + v, *o[1:]) if isinstance(o, tuple) else o + v
        hs = [blocks[int(t.name.split(".")[1]) + shift].register_forward_hook(add(torch.from_numpy(t.data.copy())))
              for t in r.tensors]
        try:
            return last_logits(model, tok)
        finally:
            for h in hs:
                h.remove()

    with sh.steer(model, {1: vec[1], 2: vec[2]}, 1.0):
        ours = last_logits(model, tok)
    torch.testing.assert_close(llama_cpp_style(0), ours, atol=1e-5, rtol=1e-5)
    assert (llama_cpp_style(-1) - ours).abs().max() > 1e-3


# --- --vector ---------------------------------------------------------------------------------------------

def test_vector_flag_seeds_a_run_and_decides_its_layers(tiny_dir, run2, exported, tmp_path):
    src = exported / "vectors" / "vector_r1.safetensors"
    # --layers 0.0 0.3 would steer block 0 of 4; the vector's metadata says blocks 1 and 2, and wins
    sh.main(["--model", tiny_dir, "--out", str(tmp_path), "--name", "seeded", *TINY_FLAGS, "--no-baselines",
             "--vector", str(src), "--layers", "0.0", "0.3"])
    run = tmp_path / "seeded"
    got, want = torch.load(run / "vector_r0.pt"), torch.load(run2 / "vector_r1.pt")
    assert sorted(got) == [1, 2]
    for l in want:
        torch.testing.assert_close(got[l], want[l], atol=0, rtol=0)
    r = next(x for x in sh.read_lines(run) if x["kind"] == "round")
    assert r["status"] == "ok" and sorted(r["vector_norms"]) == ["1", "2"]
    assert "round-0 vector read from" in (run / "log.txt").read_text()
    assert json.loads((run / "config.json").read_text())["config"]["vector"] == str(src)
    # a run's own vector_r<k>.pt is read too
    vec, meta = models.read_vector(run2 / "vector_r0.pt")
    assert sorted(vec) == [1, 2] and meta == {}


def test_vector_flag_bad_files_exit_2_and_leave_nothing(tiny_dir, run2, exported, tmp_path, capsys):
    from safetensors.torch import save_file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.safetensors").write_bytes(b"not a safetensors file")
    (bad / "garbage.json").write_text(json.dumps({"layers": [1]}))
    save_file({"direction.1": torch.randn(32)}, str(bad / "narrow.safetensors"))  # another model's width
    (bad / "narrow.json").write_text(json.dumps({"layers": [1]}))
    save_file({"direction.3": torch.randn(64)}, str(bad / "last.safetensors"))  # the last block: not steerable
    (bad / "last.json").write_text(json.dumps({"layers": [3]}))
    nometa = bad / "nometa.safetensors"
    nometa.write_bytes((exported / "vectors" / "vector_r0.safetensors").read_bytes())  # no .json beside it
    out = tmp_path / "out"
    for f, words in [("/no/such.safetensors", "FileNotFoundError"), (bad / "garbage.safetensors", "--vector"),
                     (nometa, "nometa.json"), (bad / "narrow.safetensors", "size 32"),
                     (bad / "last.safetensors", "blocks [3]"), (run2 / "rounds.jsonl", "--vector")]:
        assert exits(["--model", tiny_dir, "--out", str(out), "--vector", str(f)]) == 2
        msg = capsys.readouterr().out
        assert words in msg and "--vector" in msg, msg
        assert not out.exists() or not any(out.iterdir())


# --- any architecture: the all-linear default ---------------------------------------------------------------

def test_all_linear_follows_fused_projections_and_the_stash_restores_base(tmp_path):
    """On Phi-3 (qkv_proj, gate_up_proj) the default wraps every linear layer of the blocks, the kl_ref=base
    stash holds the same matrices, so after merging an adapter the original model is exactly reachable."""
    from peft import LoraConfig, get_peft_model
    model, tok = sh.load_model(build_tiny("phi3", tmp_path / "phi3"))
    cfg = sh.Config()
    mods = sh.lora_modules(model, cfg)
    assert {n.split(".")[-1] for n, _ in mods} == LINEARS["phi3"] and len(mods) == 4 * 4
    assert "lm_head" not in {n for n, _ in mods}
    with pytest.raises(sh.Stop, match="qkv_proj"):  # Llama's names on Phi-3: refused, naming what is there
        cli.check_targets(model, dataclasses.replace(cfg, lora_targets=("q_proj", "v_proj")))
    only = sh.lora_modules(model, dataclasses.replace(cfg, lora_targets=("qkv_proj",), lora_layers=(0.5, 1.0)))
    assert [n for n, _ in only] == ["model.layers.2.self_attn.qkv_proj", "model.layers.3.self_attn.qkv_proj"]
    base = last_logits(model, tok)
    stash = sh.stash_base(model, cfg)
    assert [id(m) for m, _ in stash] == [id(m) for _, m in mods]
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[n for n, _ in mods]))
    wrapped = {n.removeprefix("base_model.model.") for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {n for n, _ in mods}
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.1)
    merged = pm.merge_and_unload()
    assert (last_logits(merged, tok) - base).abs().max() > 1e-2
    with sh.base_weights(stash):
        torch.testing.assert_close(last_logits(merged, tok), base, atol=0, rtol=0)


@needs_eval_data
@pytest.mark.parametrize("arch", ["qwen2", "gemma2", "phi3"])
def test_one_round_on_each_architecture(arch, tmp_path):
    from peft import PeftModel
    folder = build_tiny(arch, tmp_path / arch)
    sh.main(["--model", folder, "--out", str(tmp_path), "--name", "r", *TINY_FLAGS, "--no-baselines"])
    run = tmp_path / "r"
    lines = sh.read_lines(run)
    assert [x["kind"] for x in lines] == ["base", "steered", "round"] and lines[-1]["status"] == "ok"
    # the saved adapter, loaded the plain PEFT way, wraps every linear layer of every block and nothing else
    base, _ = sh.load_model(folder)
    pm = PeftModel.from_pretrained(base, str(run / "round_0" / "adapter"))
    wrapped = {n.removeprefix("base_model.model.") for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    assert {n.split(".")[-1] for n in wrapped} == LINEARS[arch] and len(wrapped) == 4 * len(LINEARS[arch])
    model, tok, _ = sh.load_run(run)
    assert sh.fingerprint(model, tok) == pytest.approx(lines[-1]["fingerprint"], abs=2e-4)


# --- every flag checked before work starts ------------------------------------------------------------------

BAD = {  # field -> flags with a value out of its range (or unusable), one per Config field
    "model": ["--model", "./no/such/model"], "out": None, "name": ["--name", "../elsewhere"],
    "seed": ["--seed", "-1"], "seeds": ["--seeds", "41", "41"], "rounds": ["--rounds", "0"],
    "device": ["--device", "tpu"], "dtype": ["--dtype", "float8"], "resume": ["--resume", "/no/such/run"],
    "overwrite": ["--overwrite=yes"], "preset": ["--preset", "huge"], "persona": ["--persona", "pirate"],
    "pos": ["--pos", "  "], "neg": ["--pos", "Be bold.", "--neg", "Be bold."], "opp": ["--opp", sh.WARM],
    "eval_prompts": ["--eval-prompts", "poems"], "readers": ["--readers", "sentiment"],
    "layers": ["--layers", "0.6", "0.4"], "n_contexts": ["--n-contexts", "1000"], "vector": ["--vector", "/no/v.pt"],
    "alphas": ["--alphas", "0.5", "nan"], "max_new_tokens": ["--max-new-tokens", "0"],
    "temperature": ["--temperature", "0"], "top_p": ["--top-p", "1.5"], "gen_batch": ["--gen-batch", "0"],
    "compile": ["--compile=yes"],
    "steer_decay": ["--steer-decay", "-1"], "steer_decay_t": ["--steer-decay-t", "0"],
    "cosine_gate": ["--cosine-gate=1"], "steer_positions": ["--steer-positions", "prompt"],
    "backtrack": ["--backtrack=no"], "backtrack_window": ["--backtrack-window", "0"],
    "backtrack_scale": ["--backtrack-scale", "2"], "backtrack_retries": ["--backtrack-retries", "-1"],
    "tail_frac": ["--tail-frac", "0"], "ppl_mult": ["--ppl-mult", "inf"], "rep_max": ["--rep-max", "0"],
    "comp_min": ["--comp-min", "1"], "min_words": ["--min-words", "-1"], "probe_n": ["--probe-n", "0"],
    "loop_max": ["--loop-max", "0"], "topic_q": ["--topic-q", "1"], "tau_round_pow": ["--tau-round-pow", "nan"],
    "gen_pass_target": ["--gen-pass-target", "0"], "kappa_decay": ["--kappa-decay", "1"],
    "kappa_min": ["--kappa-min", "0"], "min_train": ["--min-train", "1"], "max_batches": ["--max-batches", "-1"],
    "lora_r": ["--lora-r", "0"], "lora_alpha": ["--lora-alpha", "0"], "lora_targets": ["--lora-targets", "no_such_proj"],
    "lora_layers": ["--lora-layers", "0.5", "0.5"], "lr": ["--lr", "0"], "weight_decay": ["--weight-decay", "-1"],
    "epochs": ["--epochs", "0"], "train_batch": ["--train-batch", "0"], "grad_accum": ["--grad-accum", "0"],
    "warmup": ["--warmup", "1"], "val_frac": ["--val-frac", "1"], "lam": ["--lam", "-1"], "tau": ["--tau", "-1"],
    "kl_dir": ["--kl-dir", "sideways"], "kl_agg": ["--kl-agg", "median"], "kl_ref": ["--kl-ref", "none"],
    "lam_round_pow": ["--lam-round-pow", "nan"], "anchor_nll": ["--anchor-nll", "-1"],
    "spectral_lam": ["--spectral-lam", "-1"], "max_nonfinite": ["--max-nonfinite", "2"],
    "eval_backend": ["--eval-backend", "slow"], "eval_frames": ["--eval-frames", "bogus"], "eval_n": ["--eval-n", "-1"],
    "vignettes": ["--vignettes", "/no/such.jsonl"], "statements": ["--statements", "/no/such.jsonl"],
    "persona_n": ["--persona-n", "1"], "ppl_ceil": ["--ppl-ceil", "1"], "baselines": ["--baselines=2"],
    "ablate_lam0": ["--ablate-lam0=x"], "sample_tokens": ["--sample-tokens", "0"], "eval_batch": ["--eval-batch", "0"],
    "method": ["--method", "rlhf"],
    "redo_from": ["--redo-from", "0"],  # without --resume
    "track": ["--track", "neptune"], "line_cache": ["--line-cache", __file__],  # a file, not a folder
}
# ...and a wrong-typed value for every numeric field (a tuple's: for its elements)
ELEMENT = {f.name: typing.get_args(f.type)[0] if typing.get_origin(f.type) is tuple else f.type for f in dataclasses.fields(sh.Config)}
WRONG_TYPE = [(name, ["--" + name.replace("_", "-"), "1.5" if t is int else "abc"]) for name, t in ELEMENT.items()
              if t in (int, float)]


def test_the_walk_covers_every_config_field():
    assert set(BAD) == {f.name for f in dataclasses.fields(sh.Config)}


AFTER_EVAL_DATA = {"model", "vector", "lora_targets", "statements"}  # checked after the run finds its eval data
WALK = [pytest.param(f, a, marks=needs_eval_data) if f in AFTER_EVAL_DATA else (f, a) for f, a in [*BAD.items(), *WRONG_TYPE]]


@pytest.mark.parametrize("field, argv", WALK, ids=lambda x: x if isinstance(x, str) else None)
def test_every_field_with_a_bad_value_exits_2_cleanly(field, argv, tiny_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    out = tmp_path / "out"
    out.mkdir()
    if field == "out":  # a file where the parent of run folders should be
        (tmp_path / "afile").write_text("x")
        argv = ["--out", str(tmp_path / "afile" / "results")]
    assert exits(["--model", tiny_dir, "--out", str(out), *argv]) == 2  # SystemExit(2): no other exception escaped
    got = capsys.readouterr()
    msg = got.out.strip()
    flag = "--" + field.replace("_", "-")
    assert msg.startswith("steer_heal: ") and flag in msg, msg  # names the flag
    assert "\n\n" not in msg and len(msg) < 1200, msg  # one paragraph, not a page of usage
    assert "Traceback" not in got.out + got.err
    assert not any(out.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out"] + (["afile"] if field == "out" else []))  # no run folder anywhere


def test_vector_meta_reads_the_rounds_latest_lines():
    """A --redo-from ran round 0 again at another kappa: the vector's doses are the rerun's, not the first try's."""
    from types import SimpleNamespace
    model = SimpleNamespace(config=SimpleNamespace(model_type="llama", get_text_config=lambda: SimpleNamespace(hidden_size=4)))
    cfg = sh.Config()
    first = {"kind": "round", "round": 0, "doses": [0.3, 0.6], "kappa": 1.0, "status": "ok"}
    lines = [first, {"kind": "resume", "round": -1, "redo_from": 0},
             {"kind": "round", "round": 0, "doses": [0.15, 0.3], "kappa": 0.5, "status": "ok"}]
    meta = export.vector_meta("r", cfg, lines, 0, {3: torch.ones(4)}, model)
    assert meta["kappa"] == 0.5 and meta["doses"] == [0.15, 0.3]
    assert export.vector_meta("r", cfg, [first], 0, {3: torch.ones(4)}, model)["kappa"] == 1.0
