"""A tiny chat checkpoint for CLI and server tests: a byte-level BPE tokenizer with a chat
template (built with ``tokenizers``) and a random tiny Llama saved in HF format."""
from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = """The zoo keeps its models as plain functions of their weights. A request arrives,
the scheduler finds it a row in the running batch, and the pages of the cache hold what it has
seen so far. Hello there, how are you today? I am fine, thank you, and you? Tell me a story about
a small llama that learned to count pages and tokens and sequences in a paged cache."""


def build_tokenizer(folder: Path, vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "<|end|>", "pad_token": "<pad>", "model_max_length": 512,
        "chat_template": CHAT_TEMPLATE}))
    return tok


def build_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Tokenizer + random tiny Llama (eos = ``<|end|>``) saved in HF format into ``folder``."""
    import jax

    from zoo import AutoModelForCausalLM
    from zoo.models.llama.config import LlamaConfig

    folder = Path(folder)
    tok = build_tokenizer(folder)
    vocab = tok.get_vocab_size()
    cfg = LlamaConfig.from_dict(dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, bos_token_id=1,
        eos_token_id=SPECIALS.index("<|end|>"), pad_token_id=0, tie_word_embeddings=False))
    model = AutoModelForCausalLM.from_config(cfg, jax.random.PRNGKey(seed))
    model.save_pretrained(folder)
    return folder
