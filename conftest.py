"""Shared test helper: tiny random models of real architectures, built in code (no download)."""
import torch

import steer_heal as sh


def build_tiny(arch, folder):
    """A 4-layer random `arch` model saved as a from_pretrained folder (so --model can point at it)."""
    import transformers as T
    tok = T.AutoTokenizer.from_pretrained(sh.embedded_model_path())
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
