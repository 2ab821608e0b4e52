"""Greedy sampling without a cache, for the end-of-training sample (the cached decoder lives in infer/).

The model is causal, so running it on a fixed-length window padded on the right and reading the logits at
the last real position gives the next token; one compiled shape serves every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.model import DeepSeekV3
from dsv3_jax.data import tokenizer


def greedy_sample(cfg, variables, prompt: str, max_new_tokens: int, window: int) -> str:
    """Prompt + up to max_new_tokens greedy bytes, stopping at EOS; the context is the last `window` tokens.
    `variables`: the model's collections (TrainState.variables())."""
    model = DeepSeekV3(cfg)

    @jax.jit
    def next_token(buf, last):
        logits = model.apply(variables, buf).logits
        return jnp.argmax(logits[0, last])

    ids = list(tokenizer.encode(prompt, bos=True))
    for _ in range(max_new_tokens):
        ctx = ids[-window:]
        buf = np.full((1, window), tokenizer.PAD_ID, np.int32)
        buf[0, :len(ctx)] = ctx
        tok = int(next_token(jnp.asarray(buf), len(ctx) - 1))
        if tok == tokenizer.EOS_ID:
            break
        ids.append(tok)
    return tokenizer.decode(ids)
