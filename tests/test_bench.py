"""bench.py end to end on a tiny random Llama (embedded tokenizer): the JSON has every key and every ratio is a
positive finite number; --gpu-check's CPU dry run judges every target. No timing assertions: speed lives in the
benchmark, never in a test."""
import json, math

import pytest
import torch

import bench
from lib import fast
from lib import models
import steer_heal as sh


@pytest.mark.skipif(not bench.VIGNETTES.exists(), reason="needs ../shared/tinymfv vignettes")
def test_bench_writes_every_key_and_finite_ratios(tiny_dir, tmp_path):
    out, threads = tmp_path / "bench.json", torch.get_num_threads()
    try:  # 1 thread: a tiny model's many small ops crawl when OpenMP threads share busy cores
        bench.main(["--model", tiny_dir, "--quick", "--gen-batch", "4", "--new-tokens", "4", "--repeats", "1",
                    "--eval-n", "4", "--threads", "1", "--compile-backend", "aot_eager", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
        fast.COMPILE_BACKEND = "inductor"
    r = json.loads(out.read_text())
    assert r["command"].startswith("python bench.py --model ") and r["command"].endswith(f"--out {out}")
    for key in ("machine", "memory_method", "settings", "generation", "heal", "eval", "round", "ratios", "limits",
                "checks", "wall_seconds"):
        assert key in r, key
    for key in ("cpu", "cores", "gpu", "torch", "dtype", "date"):
        assert key in r["machine"], key
    g = r["generation"]
    assert g["rows_full_length"] and g["prompt_tokens"] > 0  # min_new_tokens pins the token count
    assert g["new_tokens"] == 4 and r["settings"]["round_preset"] == "quick"
    for k in ("batched_steered", "batched_unsteered", "serial_steered", "compiled_steered", "compiled_unsteered"):
        assert g[k]["tokens"] == 4 * 4 and g[k]["tokens_per_s"] > 0
    c = g["compiled"]  # steered and unsteered compile once each in the warm-up, never while timed
    assert c["backend"] == "aot_eager" and c["graphs_warmup"] == 2 and c["recompiles_timed"] == 0
    for k in ("kl_barrier", "kl_barrier_ref_pass", "kl_barrier_step", "kl_ref_every_step", "kl_unchunked",
              "heal_loss_lam0", "nll", "nll_full_logsoftmax", "reference_pass", "reference_pass_cached_prompts"):
        assert r["heal"][k]["seconds"] > 0 and r["heal"][k]["peak_mb"] > 0
    assert r["heal"]["cached_prompts_max_abs_diff"] < 1e-4  # the prompt-cached pass: the completion tokens' states of the plain pass
    assert r["eval"]["n"] == 4 and r["eval"]["vignettes_per_s"] > 0
    rt = r["reader"]  # the fixed reader's prompt KV cache: used, and reads what the plain pass reads
    assert rt["n"] == 32 and rt["used"] is True and rt["max_abs_diff"] < 1e-4 and rt["cached"]["seconds"] > 0
    assert set(r["round"]["seconds"]) == {"vector", "generate+filter", "heal", "eval"}
    assert set(r["ratios"]) == set(bench.RATIOS) and set(r["limits"]) == set(bench.LIMITS)
    for k, v in r["ratios"].items():
        assert isinstance(v, float) and math.isfinite(v) and v > 0, (k, v)
    # every target is judged; the GPU tok/s target only on a GPU with the 1.5B shape
    assert set(r["checks"]) == {k for k, v in bench.RATIOS.items() if v[4]} | {"recompiles_timed"}
    assert set(r["checks"].values()) <= {"PASS", "FAIL"} and r["checks"]["recompiles_timed"] == "PASS"


@pytest.mark.skipif(not bench.VIGNETTES.exists(), reason="needs ../shared/tinymfv vignettes")
def test_gpu_check_dry_run_on_the_cpu_judges_every_target(tmp_path):
    """bench.py --gpu-check --device cpu: the GPU check's code on a tiny shape, so a GPU's few minutes are not spent
    finding that it does not start. Every stage runs without an exception and every target gets a verdict; the
    greedy equality is exact here (fp32, compiled without CUDA graphs), so it must PASS."""
    out, threads = tmp_path / "gpu_check.json", torch.get_num_threads()
    try:
        r = bench.main(["--gpu-check", "--device", "cpu", "--threads", "1", "--compile-backend", "aot_eager",
                        "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
        fast.COMPILE_BACKEND = "inductor"
    checks = json.loads(out.read_text())["checks"]
    assert r["dry_run"] and set(checks) == {
        "compiled_steered_tok_s", "hook_overhead_compiled", "recompiles_timed", "heal_kl_vs_nll_time",
        "heal_kl_ref_pass_vs_nll_time", "heal_kl_vs_nll_mem", "greedy_compiled_equals_eager", "whole_round",
        "wall_seconds"}  # pinned: GPU only
    assert all(v["verdict"] in ("PASS", "FAIL") and "error" not in v for v in checks.values()), checks
    for k in ("greedy_compiled_equals_eager", "recompiles_timed", "whole_round"):
        assert checks[k]["verdict"] == "PASS", (k, checks[k], r.get("greedy_diff"))
    assert set(r["round"]["seconds"]) == {"vector", "generate+filter", "heal", "eval"}


def test_judge_fails_a_ratio_past_its_target_and_passes_one_inside():
    """The verdicts themselves, on made-up numbers: a heal barrier at 1.30x plain NLL fails its <= target, one at
    1.00x passes; a >= target the other way round."""
    sec, num, den, field, op, target, _ = bench.RATIOS["heal_kl_vs_nll_time"]
    gsec, gnum, gden, gfield, gop, gtarget, _ = bench.RATIOS["gen_batched_vs_serial"]
    assert (op, gop) == ("<=", ">=")

    def verdicts(heal_ratio, gen_ratio):
        r = {s: {} for s in {x[0] for x in bench.RATIOS.values()} | {x[0] for x in bench.LIMITS.values()}}
        for k, (s, n, d, f, *_) in bench.RATIOS.items():  # every other ratio 1.0
            r[s].setdefault(n, {})[f] = 1.0
            r[s].setdefault(d, {})[f] = 1.0
        for k, (s, e, f, *_) in bench.LIMITS.items():
            r[s].setdefault(e, {})[f] = 0.0
        r["settings"] = dict(model="tiny")
        r[sec][num][field], r[sec][den][field] = heal_ratio, 1.0
        r[gsec][gnum][gfield], r[gsec][gden][gfield] = gen_ratio, 1.0
        r["machine"] = dict(device="cpu")
        bench.judge(r)
        return r["checks"]["heal_kl_vs_nll_time"], r["checks"]["gen_batched_vs_serial"]
    assert verdicts(target + 0.15, gtarget - 1) == ("FAIL", "FAIL")
    assert verdicts(target - 0.15, gtarget + 1) == ("PASS", "PASS")
