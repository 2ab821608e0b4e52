"""Byte tokenizer: exact round trip, special ids, display decoding, vocabulary checks."""

import numpy as np
import pytest

from dsv3_jax.data import tokenizer

TEXTS = ["", "hello world\n", "héllo wörld", "日本語のテキスト", "emoji 🙂🚀", "\x00\x7f tab\t",
         "a" * 1000]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))  # independent reference: the UTF-8 bytes
    assert tokenizer.decode(ids) == text


def test_constants():
    assert (tokenizer.BOS_ID, tokenizer.EOS_ID, tokenizer.PAD_ID, tokenizer.VOCAB_SIZE) == (256, 257, 258, 259)


def test_bos_eos_framing_and_bytes_input():
    ids = tokenizer.encode(b"ab", bos=True, eos=True)
    assert ids.tolist() == [256, 97, 98, 257]
    assert tokenizer.ByteTokenizer().encode("ab", bos=True).tolist() == [256, 97, 98]


def test_decode_drops_specials():
    assert tokenizer.decode([256, 104, 105, 257, 258, 258]) == "hi"
    assert tokenizer.ByteTokenizer().decode(np.array([[256, 33]])) == "!"


def test_decode_replaces_invalid_utf8_for_display():
    assert tokenizer.decode([0xFF, 104]) == "\ufffdh"
    truncated = list("é".encode("utf-8"))[:1]  # a sampled sequence cut mid-character
    assert tokenizer.decode(truncated) == "\ufffd"


@pytest.mark.parametrize("bad", [-1, 259, 1000])
def test_decode_rejects_ids_outside_vocab(bad):
    with pytest.raises(ValueError, match=f"token id {bad} at position 1"):
        tokenizer.decode([65, bad])


def test_check_vocab_size():
    tokenizer.check_vocab_size(259)
    tokenizer.check_vocab_size(384)
    with pytest.raises(ValueError, match="vocab_size=200.*at least 259"):
        tokenizer.check_vocab_size(200)
