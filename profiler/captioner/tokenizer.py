"""The captioner's word-level tokenizer: one token per caption word plus four special tokens, built
with the `tokenizers` library and wrapped as a transformers fast tokenizer so that
AutoTokenizer.from_pretrained(folder) loads it offline."""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from profiler.captioner.scenes import vocabulary

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is exactly the special tokens plus every caption word."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *vocabulary()])}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=64)


def encode_caption(tokenizer: PreTrainedTokenizerFast, caption: str) -> list[int]:
    """Token ids of a caption followed by EOS (the decoder's training target)."""
    return [*tokenizer(caption, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
