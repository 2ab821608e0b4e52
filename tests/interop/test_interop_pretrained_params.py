"""from_pretrained on a params directory written by `dsv3-convert --from-hf` (the directory the issue found
unusable): the same cfg, variables and tokenizer as from_pretrained on the Hugging Face directory itself, bit for
bit — float checkpoints, FP8 checkpoints converted with --keep-fp8 (kept FP8 or dequantized on load), without
the MTP modules, in bfloat16, and restored onto 8 fake devices in the layout the HF streaming load gives;
`--to-hf` from the params directory gives back the same weights and tokenizer; a params directory that stores
other shapes is an error naming the variable."""

from __future__ import annotations

import json
import os

import flax
import jax
import numpy as np
import pytest

import dsv3_jax
from dsv3_jax import param_tree as pt
from dsv3_jax.cli import convert
from dsv3_jax.interop import save_hf_checkpoint
from dsv3_jax.quant import FP8Weight
from tests.conftest import run_with_devices
from tests.interop.conftest import random_variables, tiny_v3
from tests.interop.test_interop_fp8 import FP8_CFG, _fp8_checkpoint

pytest.importorskip("tokenizers")


def _flat(variables) -> dict:
    """{path: numpy} with FP8Weight leaves split into (path + ('value',), path + ('scale_inv',))."""
    out = {}
    for path, x in flax.traverse_util.flatten_dict(variables).items():
        if isinstance(x, FP8Weight):
            out[path + ("value",)], out[path + ("scale_inv",)] = np.asarray(x.value), np.asarray(x.scale_inv)
        else:
            out[path] = np.asarray(x)
    return out


def _assert_same(a, b):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for path in fa:
        assert fa[path].dtype == fb[path].dtype and np.array_equal(fa[path], fb[path]), path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(HF directory with a 320-id tokenizer, its params directory from dsv3-convert --from-hf)."""
    from tests.interop.hf_fixtures import TEXT, train_bpe

    d = tmp_path_factory.mktemp("params")
    cfg = tiny_v3(vocab_size=320)
    hf = save_hf_checkpoint(cfg, random_variables(cfg), str(d / "hf"), shard_size="150KB",
                            tokenizer_from=train_bpe(str(d / "tok"), [TEXT] * 4, 320))
    assert convert.main(["--from-hf", hf, "--to", str(d / "params")]) == 0
    return hf, str(d / "params")


def test_params_directory_equals_the_hf_directory(dirs):
    from tests.interop.hf_fixtures import TEXT

    hf, params = dirs
    cfg_h, var_h, tok_h = dsv3_jax.from_pretrained(hf)
    cfg_p, var_p, tok_p = dsv3_jax.from_pretrained(params)
    assert cfg_p == cfg_h and cfg_p.mtp_depth == 1
    _assert_same(var_p, var_h)
    assert list(tok_p.encode(TEXT)) == list(tok_h.encode(TEXT)) and tok_p.eos_ids == tok_h.eos_ids
    assert os.path.isfile(os.path.join(params, "tokenizer", "tokenizer.json"))
    cfg_n, var_n, _ = dsv3_jax.from_pretrained(params, mtp=False, dtype="bfloat16", tokenizer=False)
    assert cfg_n.mtp_depth == 0 and not any(pt.is_mtp(k) for k in var_n["params"])
    emb = var_n["params"]["embed"]["embedding"]
    assert str(emb.dtype) == "bfloat16" and var_n["router"]["moe_layers"]["moe"]["bias"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(var_h["params"]["embed"]["embedding"]).astype(emb.dtype))


@pytest.fixture(scope="module")
def fp8_dirs(tmp_path_factory):
    """(an FP8 HF checkpoint with weight_scale_inv, its params directory from dsv3-convert --keep-fp8)."""
    d = tmp_path_factory.mktemp("fp8")
    hf = _fp8_checkpoint(d, tiny_v3(**FP8_CFG))[0]
    assert convert.main(["--from-hf", hf, "--to", str(d / "params"), "--keep-fp8"]) == 0
    return hf, str(d / "params")


def test_fp8_params_directory_equals_the_hf_directory(fp8_dirs):
    hf, params = fp8_dirs
    for keep in (True, False):
        cfg_h, var_h, _ = dsv3_jax.from_pretrained(hf, keep_fp8=keep, tokenizer=False)
        cfg_p, var_p, _ = dsv3_jax.from_pretrained(params, keep_fp8=keep, tokenizer=False)
        assert cfg_p == cfg_h and cfg_p.moe_impl == ("ragged" if keep else "auto")
        _assert_same(var_p, var_h)
        w1 = var_p["params"]["moe_layers"]["moe"]["routed_experts"]["w1"]
        assert isinstance(w1, FP8Weight) == keep


def test_params_directory_back_to_hf_keeps_weights_and_tokenizer(dirs, tmp_path):
    from tests.interop.hf_fixtures import TEXT

    hf, params = dirs
    assert convert.main(["--to-hf", str(tmp_path / "back"), "--from", params, "--shard-size=100KB"]) == 0
    assert os.path.isfile(tmp_path / "back" / "model.safetensors.index.json")
    cfg_b, var_b, tok_b = dsv3_jax.from_pretrained(str(tmp_path / "back"))
    cfg_h, var_h, tok_h = dsv3_jax.from_pretrained(hf)
    assert cfg_b == cfg_h and list(tok_b.encode(TEXT)) == list(tok_h.encode(TEXT))
    _assert_same(var_b, var_h)


def test_params_directory_with_other_shapes_names_the_variable(dirs, tmp_path):
    _, params = dirs
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(params, "variables"), other / "variables")
    with open(os.path.join(params, "model_config.json")) as f:
        config = json.load(f)
    (other / "model_config.json").write_text(json.dumps(dict(config, dim=48)))
    with pytest.raises(ValueError, match=r"other/variables: variable params/dense_layers/attn/wkv_a: expected "
                                         r"shape \(2, 48, 16\), found \(2, 32, 16\)"):
        dsv3_jax.from_pretrained(str(other), tokenizer=False)


EIGHT_DEVICES = """
import json, sys, numpy as np, jax
import dsv3_jax
from dsv3_jax import sharding
from dsv3_jax.quant import FP8Weight
mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})

def arrays(variables):
    split = lambda x: [x.value, x.scale_inv] if isinstance(x, FP8Weight) else [x]
    return [a for x in jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, FP8Weight)) for a in split(x)]

out = {}
for name, (hf, params, keep) in sys.argv[1].items():
    _, a, _ = dsv3_jax.from_pretrained(hf, mesh=mesh, keep_fp8=keep, tokenizer=False)
    _, b, _ = dsv3_jax.from_pretrained(params, mesh=mesh, keep_fp8=keep, tokenizer=False)
    la, lb = arrays(a), arrays(b)
    same = [x.dtype == y.dtype and x.sharding.is_equivalent_to(y.sharding, x.ndim)
            and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)]
    w1 = b["params"]["moe_layers"]["moe"]["routed_experts"]["w1"]
    w1 = w1.value if keep else w1
    out[name] = dict(n=len(la), same=all(same) and len(la) == len(lb), spec=list(w1.sharding.spec),
                     dtype=str(w1.dtype), shard=list(w1.addressable_shards[0].data.shape))
print(json.dumps(out))
"""


def test_params_directory_on_eight_devices(dirs, fp8_dirs):
    cases = dict(float=(*dirs, False), fp8_kept=(*fp8_dirs, True), fp8_dequantized=(*fp8_dirs, False))
    out = json.loads(run_with_devices(EIGHT_DEVICES.replace("sys.argv[1]", repr(cases)), 8).strip().splitlines()[-1])
    for name, r in out.items():
        assert r["same"] and r["n"] > 20 and r["spec"] == [None, "expert", "fsdp", "tensor"], (name, r)
    assert out["float"]["shard"] == [2, 4, 16, 8] and out["float"]["dtype"] == "float32"
    assert out["fp8_kept"]["dtype"] == "float8_e4m3fn" and out["fp8_dequantized"]["dtype"] == "float32"
