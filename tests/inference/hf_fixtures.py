"""Tiny Hugging Face model directories for the import tests, built offline with transformers and tokenizers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

TOKENIZER_LINES = [
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "The quick brown fox jumps over the lazy dog.",
    "import os, sys  # a comment\n\tindented\r\n",
    "café naïve résumé 東京 😀 Ünïcödé",
]
# Strings whose ids must equal transformers' tokenizer: ASCII, code, whitespace runs, unseen characters,
# emoji, special-token text, the empty string.
TEST_STRINGS = [
    "hello world", "def fib(n):\n    return 1", "  two  spaces  ", "café 東京 😀", "zzzqqq unseen words",
    "</s> not special in text", "", "x" * 40, "\n\n\t",
]


def tiny_tokenizer(directory) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few lines, with Llama's special tokens and its ``<s>`` post-processor,
    saved (``tokenizer.json`` + ``tokenizer_config.json``) into ``directory`` as transformers does."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TOKENIZER_LINES * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(directory))
    return fast


def random_perturb_norms(model) -> None:
    with torch.no_grad():  # norms start at 1: perturb them so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))


def tiny_llama(directory, seed: int = 0, max_shard_size: str | None = None, **overrides):
    """A random Llama (eager attention, large weights so layout mistakes show) saved to ``directory``."""
    torch.manual_seed(seed)
    config = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, initializer_range=0.2,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, max_position_embeddings=256)
    config.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    random_perturb_norms(model)
    model.config._attn_implementation = "eager"
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    return model


def tiny_mixtral(directory, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5,
                  initializer_range=0.2, tie_word_embeddings=False)
    config.update(overrides)
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**config)).eval()
    model.config._attn_implementation = "eager"
    model.save_pretrained(str(directory))
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens)).long()).logits.float().numpy()


def tiny_sentencepiece(directory) -> str:
    """A Llama-layout SentencePiece BPE (unk 0, <s> 1, </s> 2, byte fallback) as ``directory/tokenizer.model``."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_LINES * 10), model_writer=model, vocab_size=360, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2)
    path = os.path.join(str(directory), "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path
