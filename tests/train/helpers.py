"""A micro experiment config (synthetic data, tiny model) for fast training-loop tests."""

from dsv3_jax.experiment_config import experiment_config
from tests.conftest import tiny_config


def micro_experiment(steps=6, **train):
    model = tiny_config(vocab_size=259, init_std=0.02).to_dict()
    cd = experiment_config(model)
    cd.data.source = "synthetic"
    cd.data.synthetic_bytes = 40_000
    cd.data.val_fraction = 0.1
    cd.train.update(dict(steps=steps, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=2, log_every=1,
                         eval_every=steps, eval_batches=2, checkpoint_every=steps, sample_tokens=0))
    cd.train.update(train)
    return cd
