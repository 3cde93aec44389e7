"""fast.py: speed and memory for steer_heal.py, the same numbers as its plain path (test_compile.py proves it).

--compile's generation: a static KV cache, a compiled decode step, and one persistent steering slot per model.
The KL barrier in slices: the reference's [N, V] log-softmax is never held at once (ChunkedKL). steer_heal.py
calls these; read it for the algorithm, this file for why the fast path is shaped the way it is.
"""
import contextlib

import torch

# Compiled decoding (--compile), designed around what transformers 5.23 and torch 2.13 actually do:
# - generate() compiles only the decode step (torch.compile of model.__call__, GenerationMixin.get_compiled_call),
#   only with a compileable cache (cache_implementation="static"), and only on cuda/xpu/tpu/neuron unless
#   compile_config._compile_all_devices is set (_valid_auto_compile_criteria): we set it, so --compile compiles on
#   the CPU too. Prefill runs eager. The static cache is rebuilt per call with max(max_cache_len, the model's
#   previous one), so its length only grows; we round it up too, and pad batches to a few sizes (gen_bucket):
#   shapes repeat, and compile_config dynamic=False gives one static graph per (batch size, cache length).
# - dynamo does not guard nn.Module hooks (torch._dynamo.config.skip_nnmodule_hook_guards=True): a hook added
#   after the first compiled call is silently skipped by the compiled step (measured: prefill steered, decode
#   not). So the compiled path keeps one persistent set of hooks per model, switched by slot["on"] (a guarded
#   constant: steered and unsteered are two graphs), and generates with hook guards on (compiled_generation), so
#   any other hook change recompiles instead of going stale.
# - doses, vectors and the decode counter t are persistent device tensors written in place: a Python float dose
#   would be a constant of the graph (a recompile per new value), a Python t one per token (test_compile counts
#   graphs: new doses add none, a run adds one). They are marked static addresses, so CUDA graphs (transformers'
#   default mode on a GPU, "reduce-overhead") can read them where they are (untested on a GPU here).
COMPILE_BACKEND = "inductor"  # tests use "aot_eager": same dynamo capture and guards, no C++ build
STATIC_LEN_STEP = 128  # static cache length = prompt + new tokens, rounded up to a multiple of this


def steer_slot(model, vectors, rows, make_hook):
    """The model's persistent steering state for compiled decoding; (re)built only when the steered layers
    change or more rows are needed (then the hooks change, which recompiles once)."""
    slot = getattr(model, "_steer_slot", None)
    if slot is not None and sorted(slot["vecs"]) == sorted(vectors) and slot["coeff"].numel() >= rows:
        return slot
    if slot is not None:
        for hd in slot["handles"]:
            hd.remove()
    dev = model.device
    slot = dict(on=False, coeff=torch.zeros(max(rows, 256), device=dev),  # doses; a call uses its first rows
                t=torch.zeros((), dtype=torch.long, device=dev), vecs={l: torch.zeros_like(v, device=dev) for l, v in vectors.items()},
                decay=0.0, decay_t=32.0, cosine_gate=False, positions="all")
    for x in (slot["coeff"], slot["t"], *slot["vecs"].values()):
        torch._dynamo.mark_static_address(x)
    blocks = model.get_decoder().layers
    slot["handles"] = [blocks[l].register_forward_hook(make_hook(slot, l, min(vectors))) for l in vectors]
    model._steer_slot = slot
    return slot


def gen_bucket(n, gen_batch):
    """Batch size a compiled generate call is padded to: the smallest of 8, 16, 32, ... and gen_batch that holds n."""
    return min((b for b in {min(2 ** k, gen_batch) for k in range(3, 16)} if b >= n), default=n)


@contextlib.contextmanager
def compiled_generation(model, length):
    """generate() keyword arguments for a static cache of `length` (rounded up) and a compiled decode step, with
    dynamo guarding module hooks while it runs (see above); recompiles allowed for a few buckets x steered/not."""
    from transformers import CompileConfig
    cc = CompileConfig(backend=COMPILE_BACKEND, dynamic=False,
                       mode="reduce-overhead" if model.device.type == "cuda" else "default")
    cc._compile_all_devices = True  # transformers compiles only on accelerators otherwise
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False, recompile_limit=64):
        yield dict(cache_implementation="static", compile_config=cc,
                   max_cache_len=-(-length // STATIC_LEN_STEP) * STATIC_LEN_STEP)


KL_SLICES = 8  # barrier_kl's reference log-softmax is computed in this many slices of the completion positions


class ChunkedKL(torch.autograd.Function):
    """kl_per_position(logp, head(h), direction) over slices of `chunk` positions, where head(h) is the reference's
    log-softmax: computed slice by slice in the forward and again in the backward, so no [N, V] copy of it is ever
    held or saved. The backward writes d KL / d logp by hand (rev: p (logp - ref + 1); fwd: -exp(ref)), the same
    derivative autograd takes through kl_per_position; logp itself is already saved by its log_softmax."""
    @staticmethod
    def forward(ctx, logp, h, head, direction, chunk):
        ctx.save_for_backward(logp, h)
        ctx.head, ctx.direction, ctx.chunk = head, direction, chunk
        from steer_heal import kl_per_position  # the readable definition; this only slices it
        return torch.cat([kl_per_position(logp[i:i + chunk], head(h[i:i + chunk]), direction)
                          for i in range(0, len(h), chunk)])

    @staticmethod
    def backward(ctx, g):
        logp, h = ctx.saved_tensors
        grad, c = torch.empty_like(logp), ctx.chunk
        for i in range(0, len(h), c):
            lp, ref, out = logp[i:i + c], ctx.head(h[i:i + c]), grad[i:i + c]
            if ctx.direction == "rev":
                torch.sub(lp, ref, out=out).add_(1).mul_(lp.exp())
            else:
                torch.exp(ref, out=out).neg_()
            out.mul_(g[i:i + c, None])
        return grad, None, None, None, None
