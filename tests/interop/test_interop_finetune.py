"""Fine-tuning a Hugging Face checkpoint end to end: train.init_from=HF_DIR -> 3 steps on text + jsonl files
tokenized with the checkpoint's tokenizer -> dsv3-convert --to-hf -> transformers loads the export with the same
logits (float32, 1e-4) and the same tokenizer. The first step's cross-entropy equals transformers' on the same
batch (the weights really came from the checkpoint); the config rules of init_from name the field at fault."""

from __future__ import annotations

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ImportError)
transformers = pytest.importorskip("transformers", exc_type=ImportError)

import dsv3_jax  # noqa: E402
from dsv3_jax.cli import convert, generate as generate_cli  # noqa: E402
from dsv3_jax.data.hf_tokenizer import load_tokenizer  # noqa: E402
from dsv3_jax.data.pipeline import make_datasets  # noqa: E402
from dsv3_jax.experiment_config import experiment_config, finetune_config  # noqa: E402
from dsv3_jax.interop import jax_dirs  # noqa: E402
from dsv3_jax.train import init_from, optim  # noqa: E402
from dsv3_jax.train.loop import train  # noqa: E402
from dsv3_jax.train.state import init_state  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.interop import hf_fixtures as fx  # noqa: E402

VOCAB = 320


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    tok = fx.train_bpe(str(d / "tok"), [fx.TEXT[i:] + fx.TEXT for i in range(0, 200, 7)], VOCAB)
    model = fx.hf_v3_model(VOCAB, seed=1)
    return model, fx.hf_checkpoint(str(d / "hf"), model, tok)


def _data(tmp_path):
    os.makedirs(tmp_path / "data")
    (tmp_path / "data" / "notes.txt").write_text(fx.TEXT * 8)
    with open(tmp_path / "data" / "rows.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"text": fx.TEXT[i * 9:] + fx.TEXT[:i * 9]}) + "\n")
    return str(tmp_path / "data" / "*")


def _experiment(path, data, **model):
    cd = finetune_config()
    cd.train.update(dict(init_from=path, steps=3, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=1, log_every=1,
                         eval_every=3, eval_batches=2, checkpoint_every=3, sample_tokens=4, sample_prompt="The"))
    cd.data.update(dict(source="files", path=data, val_fraction=0.2))
    cd.model.update(model)
    return cd


def test_init_from_train_export_matches_transformers(hf_dir, tmp_path):
    model, path = hf_dir
    cd, workdir = _experiment(path, _data(tmp_path)), str(tmp_path / "run")
    summary = train(cd, workdir, log=lambda *a: None)
    assert summary["step"] == 3 and np.isfinite(summary["val_bits_per_byte"]) and summary["sample"].startswith("The")

    # Step 1 trained on batch 0 from the checkpoint's weights: its cross-entropy is transformers' on that batch.
    exp = init_from.resolve_experiment(cd)
    tok = load_tokenizer(path)
    batch = next(make_datasets(exp.data, exp.train, exp.model.max_seq_len, tokenizer=tok)[0])
    assert batch["inputs"].max() >= 259  # real BPE ids, not bytes
    logits = torch.from_numpy(fx.hf_logits(model, batch["inputs"]))
    want = float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                                   torch.from_numpy(batch["targets"]).long().reshape(-1)))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    first = [r for r in rows if r["kind"] == "train" and r["step"] == 1][0]
    assert abs(first["ce"] - want) < 1e-4, (first["ce"], want)
    assert sorted(os.listdir(os.path.join(workdir, "tokenizer")))[:2] == ["generation_config.json", "tokenizer.json"]

    # Export the fine-tuned weights; transformers gives our logits, and the tokenizer travels along.
    assert convert.main(["--to-hf", str(tmp_path / "export"), "--from", workdir]) == 0
    cfg, variables = jax_dirs.load_workdir(workdir)
    back = transformers.DeepseekV3ForCausalLM.from_pretrained(str(tmp_path / "export"), dtype=torch.float32).eval()
    ids = np.asarray([tok.encode(fx.TEXT)[:24]])
    ours = np.asarray(dsv3_jax.DeepSeekV3(cfg).apply(jax.tree.map(jnp.asarray, variables), jnp.asarray(ids)).logits)
    assert float(np.max(np.abs(fx.hf_logits(back, ids) - ours))) <= 1e-4
    assert float(np.max(np.abs(fx.hf_logits(model, ids) - ours))) > 1e-3  # it did train
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    assert hf_tok(fx.TEXT, add_special_tokens=False).input_ids == list(tok.encode(fx.TEXT, bos=False))

    # dsv3-generate --workdir decodes with the checkpoint's tokenizer kept in the workdir.
    out = io.StringIO()
    result = generate_cli.run(workdir, ["The"], max_new_tokens=4, out=out, err=io.StringIO())
    assert out.getvalue() == "The" + tok.decode(result.sequences()[0]) + "\n"

    # Resume as usual: 2 more steps from the workdir's checkpoint; the HF weights are not read again.
    lines = []
    cd.train.steps = 5
    assert train(cd, workdir, log=lines.append)["step"] == 5
    assert any(line.startswith("resumed from") and line.endswith("at step 3") for line in lines), lines
    assert not any(line.startswith("init_from:") for line in lines), lines
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5]


def test_init_from_config_rules(hf_dir, tmp_path):
    _, path = hf_dir
    data = _data(tmp_path)
    exp = init_from.resolve_experiment(_experiment(path, data, moe_impl="dense", mtp_depth=0))
    hf_cfg = dsv3_jax.from_pretrained(path, tokenizer=False)[0]
    assert exp.model == hf_cfg.replace(moe_impl="dense")  # the checkpoint's model; runtime fields may be set
    with pytest.raises(ValueError, match=r"model.n_layers=5 conflicts with the checkpoint's n_layers=3"):
        init_from.resolve_experiment(_experiment(path, data, n_layers=5))
    tiny = experiment_config(model=dict(hf_cfg.to_dict(), vocab_size=259))
    tiny.train.init_from = path
    with pytest.raises(ValueError, match=r"model.vocab_size=259 conflicts.*configs/finetune.py"):
        init_from.resolve_experiment(tiny)
    with pytest.raises(ValueError, match="train.init_from='/nonexistent': no such directory"):
        init_from.resolve_experiment(_experiment("/nonexistent", data))
    (tmp_path / "bare").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint directory; expected a Hugging Face checkpoint"):
        init_from.resolve_experiment(_experiment(str(tmp_path / "bare"), data))

    # A params directory from dsv3-convert (tokenizer files in tokenizer/) starts a run with the same weights.
    assert convert.main(["--from-hf", path, "--to", str(tmp_path / "params")]) == 0
    exp_p = init_from.resolve_experiment(_experiment(str(tmp_path / "params"), data))
    assert exp_p.model == hf_cfg and init_from.run_tokenizer(exp_p).vocab_size == VOCAB
    fresh = init_state(exp_p.model, optim.make_optimizer(exp_p.train), 0, 8)
    a = init_from.load_weights(fresh, exp_p.model, str(tmp_path / "params"), log=lambda *a: None)
    b = init_from.load_weights(fresh, exp_p.model, path, log=lambda *a: None)
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a.params, b.params)))
    assert not jnp.array_equal(a.params["embed"]["embedding"], fresh.params["embed"]["embedding"])

    os.remove(os.path.join(str(tmp_path / "params"), "tokenizer", "tokenizer.json"))
    with pytest.raises(ValueError, match=r"params/tokenizer.json is missing.*tokenized with the checkpoint's"):
        init_from.run_tokenizer(exp_p)


def test_finetune_config_file_from_the_command_line(hf_dir, tmp_path):
    """dsv3-train's flags on configs/finetune.py: init_from and runtime model fields parse, a model field that
    contradicts the checkpoint is the error naming it (the CLI prints it as one `dsv3-train: error:` line)."""
    from absl import flags
    from ml_collections import config_flags

    _, path = hf_dir
    data = _data(tmp_path)

    def parse(*overrides):
        argv = ["dsv3-train", f"--config={os.path.join(REPO, 'configs', 'finetune.py')}",
                f"--config.train.init_from={path}", f"--config.data.path={data}", "--config.train.seq_len=32", *overrides]
        fv = flags.FlagValues()  # as cli/train.py defines --config (the overrides are read from argv)
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
        fv(argv)
        return init_from.resolve_experiment(fv.config)

    hf_cfg = dsv3_jax.from_pretrained(path, tokenizer=False)[0]
    exp = parse("--config.model.moe_impl=dense", "--config.model.dtype=bfloat16", "--config.train.steps=7")
    assert exp.model == hf_cfg.replace(moe_impl="dense", dtype="bfloat16") and exp.train.steps == 7
    assert exp.data.source == "files" and exp.train.init_from == path
    with pytest.raises(ValueError, match=r"model.n_heads=4 conflicts with the checkpoint's n_heads=2"):
        parse("--config.model.n_heads=4")
    with pytest.raises(ValueError, match=r"train.seq_len=512 must be between 1 and the model's max_seq_len=64"):
        parse("--config.train.seq_len=512")  # configs/finetune.py's 512 does not fit this tiny checkpoint
