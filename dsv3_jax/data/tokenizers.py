"""The Tokenizer interface of a run: the byte tokenizer (the embedded corpus's default) or a checkpoint's own.

    tok = load_tokenizer(path)          # data/hf_tokenizer.py: tokenizer.json (+ tokenizer_config.json,
                                        # generation_config.json) in `path` or `path/tokenizer/`
    ids = tok.encode(text)              # int32 [N]; BOS first when the checkpoint says so (add_bos_token)
    text = tok.decode(ids)              # special tokens dropped
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])   # the checkpoint's chat template

Every tokenizer gives: `vocab_size` (ids are < it), `bos_id`, `eos_ids` (generation stops there), `pad_id`
(fills validation padding, masked out of every loss; it must never occur in a document), `add_bos` (documents
and prompts start with BOS), a streaming decoder, the UTF-8 bytes each id stands for (`token_bytes`, for bits
per byte whatever the tokenizer) and `check_model(vocab_size)`, a ValueError when a model's embedding cannot
hold every id (V3's vocab_size 129,280 pads past its tokenizer's 128,815 ids: fine; the reverse is an error).

`ByteTokenizer` here is data/tokenizer.py's byte ids behind the interface; `HFTokenizer` (data/hf_tokenizer.py)
reads a Hugging Face checkpoint's files with the `tokenizers` library.
"""

from __future__ import annotations

import codecs
from typing import Iterable, Sequence

import numpy as np

from dsv3_jax.data import tokenizer as byte_tok

class Tokenizer:
    """The interface (see the module docstring). Subclasses set the attributes and implement the methods."""

    name: str
    vocab_size: int
    bos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int
    add_bos: bool

    def encode(self, text: str, *, bos: bool | None = None, eos: bool = False) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def encode_documents(self, texts: Sequence[str]) -> list[list[int]]:
        """ids of many documents, without BOS/EOS (the packer adds the separators)."""
        return [list(self.encode(t, bos=False)) for t in texts]

    def stream(self) -> "TextStream":
        raise NotImplementedError

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        raise ValueError(f"{self.name}: has no chat template (--chat needs a checkpoint's tokenizer_config.json "
                         "with a chat_template)")

    def token_bytes(self) -> np.ndarray:
        raise NotImplementedError

    def check_model(self, vocab_size: int) -> None:
        """ValueError unless a model with `vocab_size` rows of embedding can take every id of this tokenizer."""
        if self.vocab_size > vocab_size:
            raise ValueError(f"model.vocab_size={vocab_size} is smaller than the {self.vocab_size} ids of the "
                             f"tokenizer ({self.name}); ids >= {vocab_size} would have no embedding row")


class TextStream:
    """Turns ids into text as they arrive: `write(ids)` returns the new text, `close()` the rest."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok

    def write(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def close(self) -> str:
        return ""


class _ByteStream(TextStream):
    def __init__(self, tok):
        super().__init__(tok)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, ids):
        return self.decoder.decode(bytes(int(i) for i in ids if 0 <= int(i) < byte_tok.NUM_BYTES))

    def close(self):
        return self.decoder.decode(b"", final=True)


class ByteTokenizer(Tokenizer):
    """data/tokenizer.py's byte-level ids (256 bytes + BOS/EOS/PAD) behind the interface."""

    name = "byte tokenizer"
    vocab_size, bos_id, eos_ids, pad_id, add_bos = (byte_tok.VOCAB_SIZE, byte_tok.BOS_ID, (byte_tok.EOS_ID,),
                                                    byte_tok.PAD_ID, True)

    def encode(self, text, *, bos=None, eos=False):
        return byte_tok.encode(text, bos=self.add_bos if bos is None else bos, eos=eos)

    def decode(self, ids):
        return byte_tok.decode(ids)

    def stream(self):
        return _ByteStream(self)

    def token_bytes(self):
        return (np.arange(self.vocab_size) < byte_tok.NUM_BYTES).astype(np.float32)

    def check_model(self, vocab_size):
        byte_tok.check_vocab_size(vocab_size)
