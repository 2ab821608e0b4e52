"""Greedy sampling without a cache, for the end-of-training sample (the cached decoder lives in infer/).

The model is causal, so running it on a fixed-length window padded on the right and reading the logits at
the last real position gives the next token; one compiled shape serves every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.data.tokenizers import ByteTokenizer
from dsv3_jax.model import DeepSeekV3


def greedy_sample(cfg, variables, prompt: str, max_new_tokens: int, window: int, tokenizer=None) -> str:
    """Prompt + up to max_new_tokens greedy tokens, stopping at EOS; the context is the last `window` tokens.
    `variables`: the model's collections (TrainState.variables()); `tokenizer`: the run's (default: bytes).
    The prompt starts with BOS, as every training document does."""
    tok = tokenizer or ByteTokenizer()
    model = DeepSeekV3(cfg)

    @jax.jit
    def next_token(buf, last):
        logits = model.apply(variables, buf).logits
        return jnp.argmax(logits[0, last])

    ids = list(tok.encode(prompt, bos=tok.bos_id is not None))
    for _ in range(max_new_tokens):
        ctx = ids[-window:]
        buf = np.full((1, window), tok.pad_id, np.int32)
        buf[0, :len(ctx)] = ctx
        token = int(next_token(jnp.asarray(buf), len(ctx) - 1))
        if token in tok.eos_ids:
            break
        ids.append(token)
    return tok.decode(ids)
