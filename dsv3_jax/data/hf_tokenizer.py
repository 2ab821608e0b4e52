"""A Hugging Face checkpoint's own tokenizer behind data/tokenizers.py's interface, and where its files live.

    tok = load_tokenizer(path)     # tokenizer.json + tokenizer_config.json (+ generation_config.json) in `path`
                                   # (an HF checkpoint) or `path/tokenizer/` (params directories, training workdirs)

tokenizer.json is run by the `tokenizers` library (BPE, added/special tokens matched inside the text, its
post-processor); tokenizer_config.json gives bos/eos/pad tokens, `add_bos_token` / `add_eos_token` and the chat
template; generation_config.json's `eos_token_id` (an id or a list) is where generation stops. DeepSeek's
tokenizer: ByteLevel BPE, 128,000 base + added tokens, BOS `<｜begin▁of▁sentence｜>` = 0, EOS
`<｜end▁of▁sentence｜>` = 1, chat turns `<｜User｜>…<｜Assistant｜>` (V3 report §5.1 post-training format).
The flags are read from the checkpoint, never assumed; chat templates render with Jinja2's sandbox as in
transformers (trim_blocks, lstrip_blocks); ids the tokenizer does not know (an embedding's padding rows)
decode to `<|id=N|>` rather than vanishing. The `tokenizers` package is imported only to build one.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Iterable, Sequence

import numpy as np

from dsv3_jax.data.tokenizers import ByteTokenizer, TextStream, Tokenizer

TOKENIZER_JSON, TOKENIZER_CONFIG, GENERATION_CONFIG = "tokenizer.json", "tokenizer_config.json", "generation_config.json"
OPTIONAL_FILES = (GENERATION_CONFIG, "special_tokens_map.json", "chat_template.jinja")
SUBDIR = "tokenizer"  # where params directories and training workdirs keep a checkpoint's tokenizer files

UNKNOWN_ID = "<|id={}|>"  # how an id outside the tokenizer (an embedding padding row) is shown


def _token_text(value):
    """A tokenizer_config token entry: "<s>" or {"content": "<s>", ...} (AddedToken), or None."""
    return value.get("content") if isinstance(value, dict) else value


@functools.cache
def _byte_alphabet() -> dict[str, int]:
    """ByteLevel BPE's printable stand-in for each byte (GPT-2 `bytes_to_unicode`), inverted: char -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class _Stream(TextStream):
    def __init__(self, tok: "HFTokenizer"):
        super().__init__(tok)
        from tokenizers.decoders import DecodeStream
        self._stream = DecodeStream(skip_special_tokens=True)

    def write(self, ids):
        out = []
        for i in map(int, ids):
            if not 0 <= i < self.tok.vocab_size:
                out.append(UNKNOWN_ID.format(i))
                continue
            piece = self._stream.step(self.tok.backend, i)
            if piece:
                out.append(piece)
        return "".join(out)


class HFTokenizer(Tokenizer):
    """tokenizer.json + tokenizer_config.json (+ generation_config.json) of directory `directory`."""

    def __init__(self, directory: str, config: dict, generation: dict):
        try:
            import tokenizers
        except ImportError:
            raise ImportError(f"{directory}: reading its tokenizer.json needs the `tokenizers` library: "
                              "pip install -e '.[hf]' (or pip install tokenizers)") from None

        self.directory, self.config = directory, config
        path = os.path.join(directory, TOKENIZER_JSON)
        self.name = path
        try:
            self.backend = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # the library raises its own exception type for unreadable files
            raise ValueError(f"{path}: not a `tokenizers` tokenizer file ({e})") from None
        vocab = self.backend.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        self.special_ids = frozenset(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)
        self.bos_id = self._token_id("bos_token", generation.get("bos_token_id"))
        eos = self._token_id("eos_token", None)
        gen_eos = generation.get("eos_token_id")
        self.eos_ids = tuple(gen_eos if isinstance(gen_eos, list) else [gen_eos]) if gen_eos is not None else (
            (eos,) if eos is not None else ())
        self.pad_id = self._pad_id(eos)
        self.add_bos = bool(config.get("add_bos_token", False))
        self.add_eos = bool(config.get("add_eos_token", False))
        if self.add_bos and self.bos_id is None:
            raise ValueError(f"{os.path.join(directory, TOKENIZER_CONFIG)}: add_bos_token is true but there is no "
                             "bos_token")

    def _token_id(self, field: str, fallback):
        text = _token_text(self.config.get(field))
        if text is None:
            return fallback
        i = self.backend.token_to_id(text)
        if i is None:
            raise ValueError(f"{os.path.join(self.directory, TOKENIZER_CONFIG)}: {field} {text!r} is not a token "
                             f"of {self.name}")
        return i

    def _pad_id(self, eos) -> int:
        """pad_token, else EOS: never the BOS that separates packed documents."""
        pad = self._token_id("pad_token", None)
        pad = eos if pad is None else pad
        if pad is None or pad == self.bos_id:
            raise ValueError(f"{os.path.join(self.directory, TOKENIZER_CONFIG)}: needs a pad_token or eos_token "
                             "other than the bos_token (validation batches are padded with it)")
        return pad

    def encode(self, text, *, bos=None, eos=False):
        """ids of `text`. bos None: as the checkpoint says (its post-processor, then add_bos_token); True /
        False: exactly one BOS first / none. Special tokens written in the text are matched as tokens."""
        ids = self.backend.encode(text, add_special_tokens=bos is None).ids
        want_bos = self.add_bos if bos is None else bos
        if want_bos and self.bos_id is None:
            raise ValueError(f"{self.name}: has no bos_token to start the text with")
        if want_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        if eos or (bos is None and self.add_eos):
            ids = ids + [self.eos_ids[0]]
        return np.asarray(ids, np.int32)

    def encode_documents(self, texts: Sequence[str]) -> list[list[int]]:
        """ids of many documents at once (the library's parallel batch encoder), without special tokens."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        out, run = [], []
        for i in ids + [None]:
            if i is not None and 0 <= i < self.vocab_size:
                run.append(i)
                continue
            if run:
                out.append(self.backend.decode(run, skip_special_tokens=True))
                run = []
            if i is not None:
                out.append(UNKNOWN_ID.format(i))
        return "".join(out)

    def stream(self) -> TextStream:
        return _Stream(self)

    def chat_template(self) -> str:
        file = os.path.join(self.directory, "chat_template.jinja")
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                return f.read()
        template = self.config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        if not isinstance(template, str):
            raise ValueError(f"{os.path.join(self.directory, TOKENIZER_CONFIG)}: has no chat_template (and there "
                             f"is no {file}); --chat needs one")
        return template

    def apply_chat_template(self, messages, add_generation_prompt=True) -> str:
        """The conversation as the checkpoint's template writes it (Jinja2 sandbox, like transformers)."""
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        tokens = {k: _token_text(v) for k, v in self.config.items() if k.endswith("_token")}
        try:
            return env.from_string(self.chat_template()).render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, **tokens)
        except TemplateError as e:
            raise ValueError(f"{self.directory}: the chat template failed: {e}") from None

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each id stands for (float32 [vocab_size]): a ByteLevel token's characters are
        one byte each, special tokens (BOS, EOS, ...) none, other added tokens their text."""
        from tokenizers import decoders

        out = np.zeros(self.vocab_size, np.float32)
        byte_level = isinstance(self.backend.decoder, decoders.ByteLevel)
        alphabet = _byte_alphabet()
        added = self.backend.get_added_tokens_decoder()
        for token, i in self.backend.get_vocab(with_added_tokens=True).items():
            if i in added:
                out[i] = 0.0 if added[i].special else len(token.encode("utf-8"))
            elif byte_level and all(c in alphabet for c in token):
                out[i] = len(token)
            else:  # not byte-level: what the id decodes to
                out[i] = len(self.backend.decode([i]).encode("utf-8"))
        return out


def _read_json(path: str, required: bool) -> dict:
    if not os.path.isfile(path):
        if required:
            raise ValueError(f"{path}: missing (a checkpoint's tokenizer needs {TOKENIZER_JSON} and "
                             f"{TOKENIZER_CONFIG})")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(out, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(out).__name__}")
    return out


def tokenizer_dir(path: str) -> str | None:
    """The directory holding a checkpoint's tokenizer.json: `path` itself or `path/tokenizer/`, else None."""
    for d in (path, os.path.join(path, SUBDIR)):
        if os.path.isfile(os.path.join(d, TOKENIZER_JSON)):
            return d
    return None


def load_tokenizer(path: str) -> "HFTokenizer":
    """The tokenizer of a checkpoint directory (HF checkpoint, params directory or training workdir)."""
    d = tokenizer_dir(path)
    if d is None:
        raise ValueError(f"{os.path.join(path, TOKENIZER_JSON)}: missing (nor in {os.path.join(path, SUBDIR)}/); "
                         "the checkpoint's tokenizer files are needed to encode text for it")
    return HFTokenizer(d, _read_json(os.path.join(d, TOKENIZER_CONFIG), True),
                       _read_json(os.path.join(d, GENERATION_CONFIG), False))


def saved_tokenizer(path: str) -> Tokenizer:
    """The checkpoint tokenizer kept in `path` (or `path/tokenizer/`), else the byte tokenizer."""
    return load_tokenizer(path) if tokenizer_dir(path) else ByteTokenizer()


def copy_tokenizer_files(src: str, dest: str) -> list[str]:
    """Copy the tokenizer files of checkpoint directory `src` into directory `dest` (made if needed); returns
    the names copied (none when `src` has no tokenizer)."""
    d = tokenizer_dir(src)
    if d is None:
        return []
    os.makedirs(dest, exist_ok=True)
    names = [n for n in (TOKENIZER_JSON, TOKENIZER_CONFIG) + OPTIONAL_FILES if os.path.isfile(os.path.join(d, n))]
    for n in names:
        shutil.copyfile(os.path.join(d, n), os.path.join(dest, n))
    return names


def same_tokenizer_files(a: str, b: str) -> bool:
    """True when checkpoint directories a and b hold byte-identical tokenizer.json and tokenizer_config.json."""
    da, db = tokenizer_dir(a), tokenizer_dir(b)
    if da is None or db is None:
        return da is db
    for n in (TOKENIZER_JSON, TOKENIZER_CONFIG):
        with open(os.path.join(da, n), "rb") as fa, open(os.path.join(db, n), "rb") as fb:
            if fa.read() != fb.read():
                return False
    return True
