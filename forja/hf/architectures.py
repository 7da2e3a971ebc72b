"""Which transformers architecture computes exactly which Forja model (by its `mlp` and `qk_norm`
switches), the refusal of the combinations none computes, and the tensor names of each."""

from __future__ import annotations

from lm.config import ModelConfig
from lm.errors import ConfigError

ARCHITECTURES = {  # (mlp, qk_norm) -> (architectures[0], model_type, hidden_act)
    ("swiglu", False): ("LlamaForCausalLM", "llama", "silu"),
    ("swiglu", True): ("Qwen3ForCausalLM", "qwen3", "silu"),
    ("relu2", False): ("ArceeForCausalLM", "arcee", "relu2"),
}
MODEL_TYPES = {model_type: (mlp, qk) for (mlp, qk), (_, model_type, _) in ARCHITECTURES.items()}


def hf_architecture(cfg: ModelConfig) -> tuple[str, str, str]:
    """(architecture, model_type, hidden_act) of the transformers class that computes exactly our model."""
    if cfg.arch != "transformer":
        raise ConfigError(
            f"invalid value {cfg.arch!r} for 'arch': the LSTM baseline has no transformers architecture; "
            "only transformer runs can be exported to Hugging Face"
        )
    key = (cfg.mlp, cfg.qk_norm)
    if key not in ARCHITECTURES:
        raise ConfigError(
            "invalid combination mlp='relu2' with qk_norm=true for a Hugging Face export: no transformers "
            "architecture has both (ArceeForCausalLM has ReLU² without QK-norm, Qwen3ForCausalLM QK-norm "
            "with SwiGLU); train with one of them to export"
        )
    return ARCHITECTURES[key]


def expected_hf_names(cfg: ModelConfig) -> set[str]:
    """Every tensor name a transformers folder of this configuration holds (the tied head excluded)."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_embeddings:
        names.add("lm_head.weight")
    mlp = ["up_proj", "down_proj"] + (["gate_proj"] if cfg.mlp == "swiglu" else [])
    attn = ["q_proj", "k_proj", "v_proj", "o_proj"]
    for i in range(cfg.n_layer):
        pre = f"model.layers.{i}"
        names |= {f"{pre}.input_layernorm.weight", f"{pre}.post_attention_layernorm.weight"}
        names |= {f"{pre}.self_attn.{m}.weight" for m in attn}
        names |= {f"{pre}.mlp.{m}.weight" for m in mlp}
        if cfg.qk_norm:
            names |= {f"{pre}.self_attn.q_norm.weight", f"{pre}.self_attn.k_norm.weight"}
    return names
