"""Fine-tune a Hugging Face DeepSeek checkpoint (or a dsv3-convert params directory) on your text:

    dsv3-train --config=configs/finetune.py --workdir=runs/ft --config.train.init_from=DIR \
        --config.data.path='my_text/**/*.txt'

The model block is left unset: it comes from DIR's config (train/init_from.py). Only runtime fields may be set
(--config.model.moe_impl=blocked, dtype, fp8, remat, ...; mtp_depth=0 drops the MTP modules); any other model
field is an error naming it. The data (text files, jsonl, or data.source='hf') is tokenized with DIR's
tokenizer, whose files are copied to the workdir (dsv3-generate --workdir and dsv3-convert --to-hf use them).
"""

from dsv3_jax.experiment_config import finetune_config


def get_config(arg=None):
    del arg
    cd = finetune_config()
    cd.data.source = "files"
    cd.train.update(dict(steps=200, batch_size=8, seq_len=512, lr=1e-5, min_lr_ratio=0.1, warmup_steps=20,
                         weight_decay=0.0, eval_every=50, eval_batches=4, checkpoint_every=100, sample_tokens=64,
                         sample_prompt="The"))
    return cd
