"""lib/fast.py: speed and memory for steer_heal.py, the same numbers as its plain path (test_compile.py proves it).

--compile's generation: a static KV cache, a compiled decode step, and one persistent steering slot per model.
The steered band's hidden states from a forward stopped above it (states_upto).
The KL barrier: the reference's states kept once per heal (kept_states), its [N, V] log-softmax computed in slices
and never held at once (ChunkedKL).
The fixed reader's prompt KV, computed once per run and shared by every line's reading (PromptKV, cached_batch).
steer_heal.py calls these (this file never imports it); read it for the algorithm, this file for why the fast path
is shaped the way it is.
"""
import contextlib

import torch

from lib import runio  # the log: whether the prompt KV cache is used (runio imports nothing of the project but track)

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


@contextlib.contextmanager
def static_steer(model, vectors, coeff, knobs, make_hook):
    """steer_heal.steer for --compile's generation: the doses and vectors written in place into the model's
    persistent slot (steer_slot), which is switched on inside the block, instead of hooks added and removed."""
    slot = steer_slot(model, vectors, len(coeff), make_hook)
    slot["coeff"].zero_()
    slot["coeff"][:len(coeff)].copy_(torch.as_tensor(coeff, dtype=torch.float32))
    for l, v in vectors.items():
        slot["vecs"][l].copy_(v)
    slot.update(knobs, on=True)
    try:
        yield slot
    finally:
        slot["on"] = False


def gen_padded(rows, coeffs, gen_batch):
    """rows (and their doses) padded with copies of row 0 at dose 0 up to gen_bucket() rows: a compiled generate
    call's batch sizes repeat (sampling draws for the copies too, so sampled text differs from the eager path's)."""
    pad = gen_bucket(len(rows), gen_batch) - len(rows)
    return rows + [rows[0]] * pad, None if coeffs is None else [*coeffs, *[0.0] * pad]


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


# The steered band's states (the vector, trait_self): the blocks above the band cannot change them, so the
# forward stops there.

class _Enough(Exception):
    """Raised by states_upto's hook once the last block it needs has run: the blocks above are not computed."""


def states_upto(model, blocks, layers, input_ids, attention_mask):
    """{l + 1: output of block l} for `layers` (indices into `blocks`, the model's decoder blocks): the same tensors
    as the forward's hidden_states[l + 1], from a forward stopped after the highest of them (the steered band stops
    at 0.6 of the depth, so 40% of the forward is skipped). No head, no final norm, no cache kept."""
    got, top = {}, max(layers)

    def grab(l):
        def hook(module, args, out):
            got[l + 1] = out[0] if isinstance(out, tuple) else out
            if l == top:
                raise _Enough
        return hook
    handles = [blocks[l].register_forward_hook(grab(l)) for l in layers]
    try:
        model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Enough:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


# barrier_kl's reference log-softmax is computed in this many slices of the completion positions: few, because each
# slice is one head matmul and a short one runs far below matmul speed (measured on this CPU, the embedded model's
# head on 192 positions: 8 slices take 2.5x the time of 1), but not 1, whose [N, V] temporaries would raise the heal
# step's peak memory (measured at bench --quick's heal batch: 4 slices add nothing to it, 2 add 3%).
KL_SLICES = 4


class ChunkedKL(torch.autograd.Function):
    """kl_per_position(logp, head(h), direction) [N] over slices of `chunk` positions, where head(h) is the
    reference's log-softmax: no [N, V] copy of it is ever held. The head runs once per step: the forward writes
    d KL / d logp as it goes (rev: p (logp - ref + 1); fwd: -exp(ref)) into one [N, V] buffer, the size of the
    gradient the backward would have allocated anyway, and the backward only scales it by the upstream grad.
    The formulas are kl_per_position's, written here so this file never imports steer_heal; test_compile.py
    proves values and gradients equal to autograd through the unchunked kl_per_position."""
    @staticmethod
    def forward(ctx, logp, h, head, direction, chunk):
        grad = torch.empty_like(logp) if ctx.needs_input_grad[0] else None
        kl = logp.new_empty(len(logp))
        for i in range(0, len(h), chunk):
            lp, ref = logp[i:i + chunk], head(h[i:i + chunk])
            # p: the distribution the KL is an expectation under, written where its gradient goes (no other copy)
            p = torch.exp(lp if direction == "rev" else ref, out=None if grad is None else grad[i:i + chunk])
            d = torch.sub(lp, ref, out=ref) if direction == "rev" else ref.sub_(lp)  # log-ratio, in ref's buffer
            kl[i:i + chunk] = (p * d).sum(-1)  # kl_per_position's own order of operations: the same rounding
            if grad is not None:  # rev: p (d + 1); fwd: -p
                p.mul_(d.add_(1)) if direction == "rev" else p.neg_()
        ctx.grad = grad  # an intermediate, not an input or output: kept on ctx, freed by the backward
        return kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        grad, ctx.grad = ctx.grad, None
        return grad.mul_(g[:, None]), None, None, None, None


def kept_states(batch, states, n, size, dev, room=None):
    """The barrier's reference, once per heal: it does not change while an adapter trains, so its last hidden states
    at the completion positions are computed once per training example, in micro-batches of `size` (batch(idx) ->
    make_batch's dict, states(b) -> [sum of b["lengths"], H]), and kept. Returns get(idx): the rows of examples idx,
    in order, on `dev`. Kept on `dev` while they fit in `room` bytes (default: a quarter of its free memory; the step
    still needs room for its activations); the rest in pinned CPU memory, copied back per micro-batch without
    blocking (UNTESTED on a GPU: bench.py --gpu-check compares the two)."""
    budget = room if room is not None else torch.cuda.mem_get_info(dev)[0] // 4 if dev.type == "cuda" else float("inf")
    rows, used = [], 0
    for i in range(0, n, size):
        b = batch(list(range(i, min(i + size, n))))
        for h in states(b).split(b["lengths"]):
            used += h.numel() * h.element_size()
            rows.append(h if used <= budget else torch.empty_like(h, device="cpu", pin_memory=True).copy_(h))
    return lambda idx: torch.cat([rows[j].to(dev, non_blocking=True) for j in idx])


# The fixed reader's prompt KV, once per run. Every line reads its greedy answers as answers to the same plain
# held-out prompts, under the same original model, so those prompts' keys and values are the same on every line;
# they are about half of each reading's tokens. Kept: each prompt's KV without its last token (that token's state is
# the first the NLL and the projection read), so a reading runs the decoder over [last prompt token] + the answer.

class PromptKV:
    """Per-prompt KV of one fixed model, by prompt ids, kept for a run (steer_heal.read_text). `ok` is None until the
    first batch has been read both ways and compared, then whether the cached pass matched the plain one."""
    def __init__(self):
        self.kv, self.ok, self.err = {}, None, None

    def fill(self, dec, prompts, pad_id):
        """The KV of every prompt not held yet, in one batched forward: right-padded, so each row's real tokens (at
        positions 0, 1, ...) never see its padding, and each row's own KV is cut out and kept."""
        new = list(dict.fromkeys(tuple(p) for p in prompts if tuple(p) not in self.kv))
        if not new:
            return
        ids = torch.full((len(new), max(len(p) - 1 for p in new)), pad_id)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(new):
            ids[i, :len(p) - 1], attn[i, :len(p) - 1] = torch.tensor(p[:-1]), 1
        past = dec(input_ids=ids.to(dec.device), attention_mask=attn.to(dec.device), use_cache=True).past_key_values
        window = getattr(dec.config, "sliding_window", None) or float("inf")
        windowed = any(type(layer).__name__ != "DynamicLayer" for layer in past.layers)
        if (windowed and ids.shape[1] >= window) or \
                not all(isinstance(getattr(layer, "keys", None), torch.Tensor) for layer in past.layers):
            # a recurrent / shared / windowed layer's cache is not a per-token KV that can be cut by row and length
            raise ValueError(f"{[type(layer).__name__ for layer in past.layers][:3]}... cache layers: no per-token KV")
        for i, p in enumerate(new):
            self.kv[p] = [(layer.keys[i:i + 1, :, :len(p) - 1].clone(), layer.values[i:i + 1, :, :len(p) - 1].clone())
                          for layer in past.layers]

    def get(self, dec, ids):
        return self.kv[tuple(ids)]

    def read(self, reader, prompts, answers, pad_id, one, plain):
        """One batch's readings (steer_heal.read_text's): one(batch, decoder kwargs) on the cached inputs, or plain()
        where the cache cannot serve (a one-token prompt; a cache this model cannot share, and then never again). The
        run's first batch is read both ways and compared (judge): the cache is kept only if the two agree."""
        if self.ok is False or min(map(len, prompts)) < 2:
            return plain()
        try:
            kw, b = cached_batch(reader.get_decoder(), self, prompts, answers, pad_id, reader.config)
            got = one(b, kw)
        except (ValueError, RuntimeError, AttributeError, TypeError) as e:  # a cache this model cannot share
            self.ok, self.kv = False, {}
            runio.log(f"  fixed reader's prompt KV cache: NOT used ({type(e).__name__}: {e})")
            return plain()
        if self.ok is None:  # the run's first batch: also the plain pass, and compare
            ref = plain()
            tol = self.judge(got, ref, exact=next(reader.parameters()).dtype == torch.float32 and not (
                reader.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32))
            runio.log(f"  fixed reader's prompt KV cache: {'used' if self.ok else 'NOT used'} (cached vs plain pass on "
                      f"{len(prompts)} answers: largest relative difference of a reading {self.err:.1e}, tolerance {tol:g})")
            got = got if self.ok else ref
        return got

    def judge(self, got, plain, exact):
        """The first batch, read cached (got) and plain, each (per-token NLL per answer, projection per answer): sets
        err (the largest relative difference of a reading: an answer's mean NLL, or its projection) and ok (err within
        the readings' own precision: 1e-3 where the matmuls are exact float32, 3e-2 under TF32 or half precision);
        a rejected cache is emptied. Returns the tolerance."""
        tol = 1e-3 if exact else 3e-2
        rel = lambda x, y: abs(x - y) / (1 + abs(y))  # noqa: E731
        self.err = max([rel(x.mean().item(), y.mean().item()) for x, y in zip(got[0], plain[0]) if len(x)]
                       + [rel(x, y) for x, y in zip(got[1], plain[1])], default=0.0)
        self.ok = self.err <= tol
        if not self.ok:
            self.kv = {}
        return tol


def cached_batch(dec, store, prompts, answers, pad_id, config):
    """(decoder kwargs, batch) for `answers` [token lists] after `prompts` [token lists, >= 2 each] whose KV `store`
    (PromptKV) holds: the prompt KV left-padded to one length P, the new tokens (each prompt's last token, then the
    answer but its last) right-padded, positions continuing each prompt's. The batch's pred / tgt / lengths are
    make_batch's, in the new tokens' frame: pred[i, t] for t < len(answer i), tgt[i, t] = answer i's token t."""
    from transformers import DynamicCache
    dev = dec.device
    store.fill(dec, prompts, pad_id)
    kvs = [store.get(dec, p) for p in prompts]
    P, C, B = max(len(p) - 1 for p in prompts), max(1, max(len(a) for a in answers)), len(prompts)
    ids, tgt = torch.full((B, C), pad_id), torch.full((B, C), pad_id)
    attn, pred = torch.zeros(B, P + C, dtype=torch.long), torch.zeros(B, C, dtype=torch.bool)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        new = ([p[-1]] + list(a[:-1]))[:max(1, len(a))]
        ids[i, :len(new)], tgt[i, :len(a)], pred[i, :len(a)] = torch.tensor(new), torch.tensor(list(a), dtype=torch.long), True
        attn[i, P - (len(p) - 1):P + len(new)] = 1
    pos = torch.tensor([len(p) - 1 for p in prompts])[:, None] + torch.arange(C)
    pad = lambda t, p: torch.nn.functional.pad(t, (0, 0, P - (len(p) - 1), 0))  # noqa: E731 (left: prompts end at P)
    cache = DynamicCache(ddp_cache_data=[(torch.cat([pad(kv[l][0], p) for kv, p in zip(kvs, prompts)]),
                                          torch.cat([pad(kv[l][1], p) for kv, p in zip(kvs, prompts)]))
                                         for l in range(len(kvs[0]))], config=config)
    kw = dict(input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev), past_key_values=cache,
              use_cache=True)
    return kw, dict(pred=pred.to(dev), tgt=tgt.to(dev), lengths=[len(a) for a in answers])
