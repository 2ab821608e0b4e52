"""The batch pipeline (prefetching iterator): seeded shuffle, exact resume, per-host shards, deterministic val, make_datasets."""

import collections
import json
import math
import threading

import numpy as np
import pytest

from dsv3_jax.data import baseline, packing, pipeline

PAD = 258
T = 8  # seq_len
N_WINDOWS = 50
# Values >= 1000 are never PAD or BOS, and stream[i] = i + 1000 makes every window identifiable.
STREAM = np.arange(N_WINDOWS * T + 1 + 5) + 1000  # 5 extra tokens: a final remainder


def window_ids(batch):
    """Which window each row is (its first input is stream[w * T])."""
    return ((batch["inputs"][:, 0] - 1000) // T).tolist()


def take(it, k):
    return [next(it) for _ in range(k)]


def make(seed=0, batch=10, pi=0, pc=1):
    return pipeline.TrainIterator(STREAM, T, batch, seed, pi, pc)


def test_batch_format_and_shift():
    b = next(make())
    assert set(b) == {"inputs", "targets"}
    assert b["inputs"].shape == b["targets"].shape == (10, T) and b["inputs"].dtype == np.int32
    np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)  # next-token targets


def test_shuffle_deterministic_per_seed_and_epochs_cover_all_windows():
    a = [window_ids(b) for b in take(make(seed=3), 15)]
    assert a == [window_ids(b) for b in take(make(seed=3), 15)]
    assert a != [window_ids(b) for b in take(make(seed=4), 15)]
    flat = sum(a, [])  # 150 windows = 3 epochs of 50
    epochs = [flat[i * N_WINDOWS:(i + 1) * N_WINDOWS] for i in range(3)]
    assert all(sorted(e) == list(range(N_WINDOWS)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != list(range(N_WINDOWS))


def test_state_restore_gives_identical_next_batches():
    it = make(seed=7)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # as orbax would store it
    expected = take(it, 8)  # crosses an epoch boundary (5 batches per epoch)
    fresh = make(seed=7)
    fresh.set_state(state)
    for e, g in zip(expected, take(fresh, 8)):
        np.testing.assert_array_equal(e["inputs"], g["inputs"])
        np.testing.assert_array_equal(e["targets"], g["targets"])
    it.set_state(state)  # rewinding the same iterator works too
    assert window_ids(next(it)) == window_ids(expected[0])


def test_state_mismatch_and_garbage_are_errors():
    state = make(seed=1).get_state()
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        make(seed=2).set_state(state)
    with pytest.raises(ValueError, match="batch_size: saved 10, now 5"):
        make(seed=1, batch=5).set_state(state)
    other = pipeline.TrainIterator(STREAM[::-1].copy(), T, 10, 1)
    with pytest.raises(ValueError, match="stream_digest"):
        other.set_state(state)
    with pytest.raises(ValueError, match="TrainIterator.get_state"):
        make().set_state({"next_index": 3})


def test_host_shards_are_disjoint_and_union_to_global_batch():
    global_batches = [window_ids(b) for b in take(make(seed=5, batch=12), 6)]
    hosts = [[window_ids(b) for b in take(make(seed=5, batch=12, pi=p, pc=4), 6)] for p in range(4)]
    for step, g in enumerate(global_batches):
        parts = [hosts[p][step] for p in range(4)]
        assert sum(parts, []) == g  # host p holds rows [3p, 3p + 3): contiguous, in process order
        assert all(len(part) == 3 for part in parts)


def test_state_moves_across_host_counts():
    single = make(seed=5, batch=12)
    take(single, 2)
    state = single.get_state()
    expected = window_ids(next(single))
    host1 = make(seed=5, batch=12, pi=1, pc=2)
    host1.set_state(state)
    assert window_ids(next(host1)) == expected[6:]


def test_host_and_batch_errors():
    with pytest.raises(ValueError, match="train.batch_size=10.*process_count=4"):
        make(batch=10, pc=4)
    with pytest.raises(ValueError, match="process_index=2"):
        make(pi=2, pc=2)
    with pytest.raises(ValueError, match=r"train split has 5 tokens, fewer than train.seq_len \+ 1 = 9"):
        pipeline.TrainIterator(STREAM[:5], T, 2, 0)


def test_seq_len_above_max_names_both_numbers():
    with pytest.raises(ValueError, match="train.seq_len=1024.*max_seq_len=512"):
        pipeline.check_seq_len(1024, 512)
    pipeline.check_seq_len(512, 512)


def test_val_batches_deterministic_cover_every_token_once():
    for pc in (1, 2):
        per_host = [pipeline.ValBatches(STREAM, T, 8, p, pc) for p in range(pc)]
        runs = [[b["targets"] for b in v()] for v in per_host]
        again = [[b["targets"].tolist() for b in v()] for v in per_host]
        assert [[x.tolist() for x in r] for r in runs] == again
        targets = np.concatenate([t.reshape(-1) for r in runs for t in r])
        real = targets[targets != PAD]
        assert sorted(real.tolist()) == STREAM[1:].tolist()  # every val token is a target exactly once
    v = pipeline.ValBatches(STREAM, T, 8)
    assert v.num_batches == math.ceil(51 / 8)  # 50 full windows + 1 padded remainder window
    assert [b["inputs"].tolist() for b in v(max_batches=2)] == [b["inputs"].tolist() for b in v()][:2]


def cfg(data, **train):
    """The typed config blocks make_datasets takes (experiment_config.TrainConfig, data/config.DataConfig)."""
    from dsv3_jax.experiment_config import DataConfig, TrainConfig
    return DataConfig(**data), TrainConfig(**dict(dict(seed=0, batch_size=4, seq_len=32, warmup_steps=0), **train))


def test_make_datasets_synthetic_and_unigram_baseline():
    data_cfg, train_cfg = cfg(dict(source="synthetic", path="", val_fraction=0.1, synthetic_bytes=60_000))
    train_it, val_fn = pipeline.make_datasets(data_cfg, train_cfg, max_seq_len=64)
    b = next(train_it)
    assert b["inputs"].shape == (4, 32) and b["inputs"].max() <= 256
    info = train_it.info
    left_out = info.train_tokens - 1 - 32 * info.train_windows
    assert info.train_tokens_left_out == left_out == (info.train_tokens - 1) % 32
    val_tokens = val_fn.tokens
    counts = collections.Counter(int(t) for t in val_tokens if t < 256)  # independent entropy
    total = sum(counts.values())
    expected = -sum(c / total * math.log2(c / total) for c in counts.values())
    assert val_fn.info.val_unigram_bits_per_byte == pytest.approx(expected, rel=1e-12)
    assert "bits/byte" in train_it.info.summary()
    with pytest.raises(ValueError, match="train.seq_len=32.*max_seq_len=16"):
        pipeline.make_datasets(data_cfg, train_cfg, max_seq_len=16)


def test_make_datasets_stdlib_small_and_split_is_by_file():
    data_cfg, train_cfg = cfg(dict(source="stdlib", path="", val_fraction=0.2, max_docs=30))
    train_it, val_fn = pipeline.make_datasets(data_cfg, train_cfg, max_seq_len=128, process_index=1,
                                              process_count=2)
    assert next(train_it)["inputs"].shape == (2, 32)
    info = train_it.info
    assert info.train_docs + info.val_docs <= 30 and info.val_docs >= 1
    # Packed val stream == the val documents only: no file contributes to both splits.
    assert info.val_tokens == len(val_fn.tokens) and info.train_tokens + info.val_tokens == sum(
        len(d.text) + 1 for d in pipeline.corpus.load_stdlib(max_files=30).documents)


def test_unigram_baseline_simple_cases():
    assert baseline.unigram_bits_per_byte(np.array([0, 1, 2, 3] * 5 + [256, 258])) == pytest.approx(2.0)
    assert baseline.unigram_bits_per_byte(np.array([7, 7, 7])) == 0.0
    assert baseline.nats_to_bits(math.log(2.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no byte tokens"):
        baseline.unigram_bits_per_byte(np.array([256, 258]))


def test_make_datasets_files_end_to_end(tmp_path):
    for i in range(6):
        (tmp_path / f"doc{i}.txt").write_text(f"document number {i} " * 20)
    data_cfg, train_cfg = cfg(dict(source="files", path=str(tmp_path / "*.txt"), val_fraction=0.34))
    train_it, val_fn = pipeline.make_datasets(data_cfg, train_cfg, max_seq_len=32)
    assert (train_it.info.train_docs, train_it.info.val_docs) == (4, 2)
    val = list(val_fn())
    assert all(v["inputs"].shape == (4, 32) for v in val)
    assert int((np.concatenate([v["targets"] for v in val]) != PAD).sum()) == len(val_fn.tokens) - 1
    assert packing.document_segments(val[0]["inputs"])[0].max() >= 1


def test_prefetcher_computes_ahead_with_the_same_items_and_state():
    calls, ready = [], threading.Event()

    def fn(k):
        calls.append(k)
        if k == 2:
            ready.set()
        return k * 10

    it = pipeline.Prefetcher(fn, depth=2)
    assert next(it) == 0 and it.get_state() == {"next_index": 1}
    assert ready.wait(10)  # items 1 and 2 were computed on the worker before anyone asked for them
    assert take(it, 3) == [10, 20, 30] and it.get_state() == {"next_index": 4}
    it.set_state({"next_index": 7})  # resume: pending items are dropped, the order restarts at 7
    assert take(it, 2) == [70, 80] and it.get_state() == {"next_index": 9}


def test_prefetching_iterator_equals_direct_batches_and_resumes():
    it = pipeline.TrainIterator(STREAM, T, 6, 9)
    order = pipeline.sampler.WindowOrder(N_WINDOWS, 6, 9)
    direct = pipeline.batch_fn(STREAM, T, order, slice(0, 6))
    assert [window_ids(b) for b in take(it, 12)] == [window_ids(direct(k)) for k in range(12)]
    resumed = pipeline.TrainIterator(STREAM, T, 6, 9, backend="numpy")
    resumed.set_state(it.get_state())
    assert window_ids(next(resumed)) == window_ids(next(it)) == window_ids(direct(12))


def test_backend_values():
    with pytest.raises(ValueError, match="data.backend='tf'"):
        pipeline.TrainIterator(STREAM, T, 6, 9, backend="tf")
    with pytest.raises(ValueError, match="'grain' backend was removed"):
        pipeline.DataConfig(backend="grain")
    it = pipeline.TrainIterator(STREAM, T, 6, 9)
    assert window_ids(next(it)) == window_ids(next(pipeline.TrainIterator(STREAM, T, 6, 9, backend="numpy")))
    assert it.get_state()["next_batch"] == 1
def test_make_datasets_takes_config_dicts():
    ml_collections = pytest.importorskip("ml_collections")
    data_cfg, train_cfg = cfg(dict(source="synthetic", path="", val_fraction=0.1, synthetic_bytes=20_000))
    a, _ = pipeline.make_datasets(ml_collections.ConfigDict(data_cfg.to_dict()),
                                  ml_collections.ConfigDict(train_cfg.to_dict()), 32)
    b, _ = pipeline.make_datasets(data_cfg, train_cfg, 32)
    np.testing.assert_array_equal(next(a)["inputs"], next(b)["inputs"])
    # A mapping is validated into a DataConfig: a misspelled key is an error, never a silent default.
    with pytest.raises(ValueError, match=r"data: unknown field\(s\) \['val_fracton'\].*data.val_fraction"):
        pipeline.make_datasets(dict(source="synthetic", val_fracton=0.5), train_cfg, 32)
