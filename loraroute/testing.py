"""Tiny models built from a config, for tests and examples that must not download anything.

``make_tiny_base(folder)`` writes a 2-layer Llama with a small byte-level BPE tokenizer and a
ChatML chat template; ``make_tiny_adapter(base, folder)`` writes a PEFT LoRA folder for it;
``make_random_lora(base, folder)`` writes one for any Llama-style base (SmolLM2) without loading it.
All are deterministic for a given seed, so fingerprints and digests are stable.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The patient should take the medicine twice a day with water.",
    "Solve for x: 2x + 3 = 7, so x equals 2.",
    "The contract clause limits liability to direct damages only.",
    "def add(a, b): return a + b  # python function",
    "Hello! How can I help you today? I am a helpful assistant.",
    "What is the weather like? It is sunny and warm outside.",
    "0123456789 + - * / = ( ) [ ] { } : ; , . ? ! ' \"",
]


def make_tiny_tokenizer(folder: Path | str, vocab_size: int = 320):
    """Train a byte-level BPE tokenizer on a fixed corpus and save it with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def make_tiny_base(
    folder: Path | str,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 320,
) -> Path:
    """Write a tiny random Llama (safetensors + tokenizer + chat template) into ``folder``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer(folder, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(folder)
    return folder


def make_tiny_adapter(
    base: Path | str,
    folder: Path | str,
    *,
    seed: int = 1,
    r: int = 4,
    alpha: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    scale: float = 0.5,
) -> Path:
    """Write a PEFT LoRA adapter for the tiny base with non-zero (random) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(folder))
    # record the base path so the adapter folder is self-describing, as PEFT does for hub ids
    cfg_path = folder / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(data, indent=2))
    return folder


# where each LoRA target sits in a Llama-style layer, and its (fan_in, fan_out) from the config
_LLAMA_PARTS = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def make_random_lora(
    base: Path | str,
    folder: Path | str,
    *,
    seed: int = 0,
    r: int = 8,
    targets: tuple[str, ...] | list[str] = ("q_proj", "v_proj"),
    a_scale: float = 0.02,
    b_scale: float = 0.01,
) -> Path:
    """Write a PEFT LoRA folder with small random weights for any Llama-style base folder.

    Shapes come from the base's ``config.json``, so the model itself is never loaded: this is
    how tests and benchmarks make adapters for the real SmolLM2 in milliseconds.
    """
    import torch
    from safetensors.torch import save_file

    base, folder = Path(base), Path(folder)
    cfg = json.loads((base / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * head_dim
    shapes = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name in targets:
            fan_in, fan_out = shapes[name]
            key = f"base_model.model.model.layers.{layer}.{_LLAMA_PARTS[name]}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) * a_scale
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * b_scale
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": sorted(targets),
        "bias": "none",
        "base_model_name_or_path": str(base),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder
