"""Packing: every token kept in order with BOS before each document; windows tile the stream."""

import numpy as np
import pytest

from dsv3_jax.data import packing

BOS, PAD = 256, 258
DOCS = [b"first doc", b"", b"x", "second \xe9t\xe9".encode("utf-8"), b"a much longer third document " * 5]


def reference_stream(docs):
    """Independent reference: BOS then the document's bytes, for every document, in order."""
    out = []
    for d in docs:
        out.append(BOS)
        out.extend(d)
    return out


def test_pack_preserves_every_token_in_order():
    stream = packing.pack_documents(DOCS)
    assert stream.dtype == np.uint16
    assert stream.tolist() == reference_stream(DOCS)
    assert int((stream == BOS).sum()) == len(DOCS)


def test_pack_empty():
    assert packing.pack_documents([]).shape == (0,)


@pytest.mark.parametrize("seq_len", [1, 4, 7, 16])
def test_windows_tile_the_stream(seq_len):
    stream = packing.pack_documents(DOCS)
    n = packing.num_windows(len(stream), seq_len)
    batch = packing.split_inputs_targets(packing.gather_windows(stream, np.arange(n), seq_len))
    inputs, targets = batch["inputs"], batch["targets"]
    assert inputs.shape == targets.shape == (n, seq_len) and inputs.dtype == np.int32
    assert inputs.reshape(-1).tolist() == stream[: n * seq_len].tolist()
    assert targets.reshape(-1).tolist() == stream[1: n * seq_len + 1].tolist()
    left_out = len(stream) - 1 - n * seq_len
    assert 0 <= left_out < seq_len  # only the documented final remainder is not a target


def test_padded_windows_cover_every_token():
    stream = packing.pack_documents(DOCS)
    seq_len = 16
    padded, n = packing.padded_windows(stream, seq_len)
    targets = packing.gather_windows(padded, np.arange(n), seq_len)[:, 1:].reshape(-1)
    real = targets[targets != PAD]
    assert real.tolist() == stream[1:].tolist()
    assert len(targets) - len(real) < seq_len


def test_document_segments():
    inputs = np.array([[97, 98, BOS, 99, BOS, 100, PAD, PAD],
                       [BOS, 97, 98, 99, BOS, 100, 101, 102]])
    seg, pos = packing.document_segments(inputs)
    assert seg.tolist() == [[1, 1, 2, 2, 3, 3, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2]]
    assert pos.tolist() == [[0, 1, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 0, 1, 2, 3]]
