"""Data: byte tokenizer, corpora (stdlib / files / Hugging Face / synthetic), packing, a prefetching batch iterator.

The training loop needs only `make_datasets`; see pipeline.py for the batch format and checkpoint state.
"""

from dsv3_jax.data.baseline import nats_to_bits, unigram_bits_per_byte
from dsv3_jax.data.corpus import Corpus, Document, load_corpus, split_documents
from dsv3_jax.data.packing import document_segments, pack_documents
from dsv3_jax.data.pipeline import DataInfo, TrainIterator, ValBatches, check_seq_len, make_datasets
from dsv3_jax.data.tokenizer import (BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer, check_vocab_size,
                                     decode, encode)

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "VOCAB_SIZE", "ByteTokenizer", "Corpus", "DataInfo", "Document",
    "TrainIterator", "ValBatches", "check_seq_len", "check_vocab_size", "decode", "document_segments",
    "encode", "load_corpus", "make_datasets", "nats_to_bits", "pack_documents", "split_documents",
    "unigram_bits_per_byte",
]
