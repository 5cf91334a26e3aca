"""Build tiny real models from a config (no hub): a WordLevel tokenizer, a 2-layer Llama
generator with a chat template (and variants shaped like Llama 3 and Qwen2, each with its
own template), and a 1-layer BERT sentence-transformer.

They are saved as ordinary model folders, so tests load them through the same code path
(`core.models`) that users' folders and hub models take.
"""

from __future__ import annotations

from pathlib import Path

# A ChatML template like SmolLM2's, so prompt tests exercise a real chat template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama 3's template (header tokens, <|eot_id|> ends a turn, BOS in the template itself).
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen2's template (ChatML that adds its own system turn when the messages have none).
QWEN2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|im_start|>", "<|im_end|>", "<s>"]
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN2_SPECIAL = ["<|endoftext|>"]

CORPUS = [
    "The Eiffel Tower is in Paris, the capital of France.",
    "Paris hosted the Olympic Games in 1900, 1924 and 2024.",
    "Mount Everest is the highest mountain on Earth, in the Himalayas.",
    "The Nile is a river in Africa and one of the longest rivers in the world.",
    "Python is a programming language created by Guido van Rossum.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Great Wall of China was built over many centuries.",
    "Marie Curie won Nobel Prizes in physics and in chemistry.",
    "system user assistant question answer passages short phrase copied from the",
    "What Which Who When Where How is was in of a an and to",
]


def _tokenizer(corpus: list[str], special: list[str] | None = None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=special or SPECIAL))
    return tok


def build_tiny_generator(
    dest: Path, corpus: list[str] | None = None, seed: int = 0, max_positions: int = 1024
) -> Path:
    """A 2-layer LlamaForCausalLM (hidden 32) with a WordLevel tokenizer and chat template;
    ``max_positions`` is its context length."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = _tokenizer(corpus or CORPUS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="<s>",
        eos_token="<|im_end|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def build_tiny_llama3_generator(dest: Path, seed: int = 0) -> Path:
    """A 2-layer LlamaForCausalLM with Llama 3's chat template and end-of-turn token."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(CORPUS, SPECIAL + LLAMA3_SPECIAL),
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )
    tok.chat_template = LLAMA3_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=500000.0,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    return _save(LlamaForCausalLM(cfg), tok, dest)


def build_tiny_qwen2_generator(dest: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2ForCausalLM (q/k/v biases, sliding-window config) with Qwen2's
    ChatML template (its own default system turn) and <|endoftext|> as EOS."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _qwen2_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    return _save(Qwen2ForCausalLM(cfg), tok, dest)


def _qwen2_tokenizer():
    """Qwen2's own tokenizer class (transformers picks it for every qwen2 model folder): a
    byte-level BPE, trained here on the corpus and ragtune's prompt words, so it has a
    newline token like the real one."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from ragtune.core.prompts import CLOSED_BOOK_INSTRUCTION, CONTEXT_INSTRUCTION, SYSTEM_PROMPT

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=QWEN2_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = [*CORPUS, SYSTEM_PROMPT, CLOSED_BOOK_INSTRUCTION, CONTEXT_INSTRUCTION]
    bpe.train_from_iterator([*texts, "Question: Passages:\n[1] system\nuser\nassistant\n"], trainer)
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" "))
        for m in json.loads(bpe.to_str())["model"]["merges"]
    ]
    tok = Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN2_TEMPLATE
    return tok


def _save(model, tok, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def build_tiny_embedder(
    dest: Path, corpus: list[str] | None = None, seed: int = 0, arch: str = "bert"
) -> Path:
    """A 1-layer encoder (hidden 32; ``arch``: bert, roberta, distilbert or mpnet) as a
    SentenceTransformer: Transformer -> mean Pooling -> Normalize."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer, models
    from transformers import PreTrainedTokenizerFast

    core = _tokenizer(corpus or CORPUS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    kind = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "mpnet": "MPNet"}
    config_class = getattr(transformers, kind[arch] + "Config")
    model_class = getattr(transformers, kind[arch] + "Model")
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    if arch == "distilbert":  # the same sizes, named differently
        sizes = {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}
    else:
        sizes["intermediate_size"] = 64
    extra = {}
    if arch != "bert":  # RoBERTa and MPNet count positions from the pad id + 1
        extra = {"pad_token_id": tok.pad_token_id, "max_position_embeddings": 514}
    cfg = config_class(vocab_size=len(tok), **sizes, **({"max_position_embeddings": 512} | extra))
    hf_dir = dest.parent / (dest.name + "-hf")
    model_class(cfg).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=128)
    pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    st.save(str(dest))
    return dest
