"""Build tiny real models from a config (no hub): a WordLevel tokenizer, a 2-layer Llama
generator with a chat template, and a 1-layer BERT sentence-transformer.

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
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|im_start|>", "<|im_end|>", "<s>"]

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


def _tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIAL))
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


def build_tiny_embedder(dest: Path, corpus: list[str] | None = None, seed: int = 0) -> Path:
    """A 1-layer BERT (hidden 32) as a SentenceTransformer: Transformer -> mean Pooling -> Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

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
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    hf_dir = dest.parent / (dest.name + "-hf")
    BertModel(cfg).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=128)
    pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    st.save(str(dest))
    return dest
