"""Shared test helpers: tiny random models of real architectures, built in code (no download), and the
skip for whole runs on a clone that has no eval data beside it."""
import pytest
import torch

from lib import cli
from lib import models
import steer_heal as sh


def _eval_data_missing():
    """Why a whole run cannot start here ('' if it can). A run reads tinymfv vignettes (the tinymfv package, or
    ../shared/tinymfv in this workplace) and persona statements (../shared/persona) before it loads the model,
    so on a bare clone every run-level test would fail on that first check instead of on what it tests."""
    try:
        cli.find_vignettes(sh.Config(vignettes=""))  # the seed persona's tinymfv; love skips it
    except sh.Stop as e:
        return str(e)
    return "" if cli.find_statements(sh.Config()) else "no persona statements (../shared/persona)"


EVAL_DATA_MISSING = _eval_data_missing()
needs_eval_data = pytest.mark.skipif(bool(EVAL_DATA_MISSING), reason=f"a whole run needs eval data: {EVAL_DATA_MISSING}")


def skip_without_eval_data():
    """For fixtures that make a run: skipping here skips every test that uses the fixture."""
    if EVAL_DATA_MISSING:
        pytest.skip(f"a whole run needs eval data: {EVAL_DATA_MISSING}")


def build_tiny(arch, folder):
    """A 4-layer random `arch` model saved as a from_pretrained folder (so --model can point at it)."""
    import transformers as T
    tok = T.AutoTokenizer.from_pretrained(models.embedded_model_path())
    conf, model = {"llama": (T.LlamaConfig, T.LlamaForCausalLM), "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
                   "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM), "phi3": (T.Phi3Config, T.Phi3ForCausalLM)}[arch]
    extra = dict(gemma2=dict(head_dim=16), phi3=dict(original_max_position_embeddings=1024)).get(arch, {})
    cfg = conf(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
    torch.manual_seed(0)
    m = model(cfg)
    with torch.no_grad():  # larger weights than the default init so layers actually mix tokens
        for p in m.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.08)
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """THE tiny model of the tests: a 4-layer random Llama as a from_pretrained folder (so --model can point at it),
    built once for the whole session. Other architectures: build_tiny(arch, folder)."""
    return build_tiny("llama", tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny(tiny_dir):
    """(model, tok) of tiny_dir, loaded fresh for each test (tests may change its weights)."""
    return sh.load_model(tiny_dir)
