"""Corpus sources and the by-document split, including every bad-input error."""

import json
import os
import sys
import time
import types

import pytest

from dsv3_jax.data import corpus, synthetic


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


@pytest.fixture
def user_files(tmp_path):
    write(tmp_path / "b.txt", "second file\n")
    write(tmp_path / "a.txt", "first file ü\n")
    write(tmp_path / "sub" / "c.jsonl",
          json.dumps({"text": "record one"}) + "\n\n" + json.dumps({"text": "record two", "id": 2}) + "\n")
    write(tmp_path / "sub" / "empty.txt", "")
    return tmp_path


def test_files_glob_sorted_text_and_jsonl(user_files):
    c = corpus.load_files(str(user_files / "**" / "*"))
    assert [d.name for d in c.documents] == ["a.txt", "b.txt", "sub/c.jsonl:1", "sub/c.jsonl:3"]
    assert [d.text for d in c.documents] == ["first file ü\n".encode(), b"second file\n", b"record one",
                                             b"record two"]
    assert c.num_empty == 1 and "1 empty" in c.summary()
    # A directory as data.path, and max_docs.
    assert [d.name for d in corpus.load_files(str(user_files), max_docs=2).documents] == ["a.txt", "b.txt"]


def test_empty_glob_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing*.txt")
    with pytest.raises(ValueError, match="matched no files") as e:
        corpus.load_files(pattern)
    assert pattern in str(e.value)
    with pytest.raises(ValueError, match="data.path is empty"):
        corpus.load_files("")


def test_non_utf8_file_is_an_error_naming_it_unless_skipped(user_files):
    bad = write(user_files / "latin1.txt", "caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8") as e:
        corpus.load_files(str(user_files / "*.txt"))
    assert str(bad) in str(e.value) and "skip_non_utf8" in str(e.value)
    c = corpus.load_files(str(user_files / "*.txt"), skip_non_utf8=True)
    assert [d.name for d in c.documents] == ["a.txt", "b.txt"]
    assert c.skipped == ("latin1.txt: not UTF-8",) and "1 files skipped" in c.summary()


def test_unreadable_file_names_it(tmp_path):
    write(tmp_path / "ok.txt", "fine")
    os.symlink(tmp_path / "missing-target", tmp_path / "broken.txt")
    with pytest.raises(ValueError, match="cannot read data file") as e:
        corpus.load_files(str(tmp_path / "*.txt"))
    assert "broken.txt" in str(e.value)


def test_bad_jsonl_names_file_and_line(tmp_path):
    write(tmp_path / "d.jsonl", '{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: invalid JSON"):
        corpus.load_files(str(tmp_path / "d.jsonl"))
    write(tmp_path / "d.jsonl", '{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: expected a JSON object with a string field 'text'"):
        corpus.load_files(str(tmp_path / "d.jsonl"))
    write(tmp_path / "d.jsonl", '{"body": "one"}\n{"body": "two"}\n')
    assert [d.text for d in corpus.load_files(str(tmp_path / "d.jsonl"), text_field="body").documents] == \
        [b"one", b"two"]


def test_empty_corpus_is_an_error(tmp_path):
    write(tmp_path / "e1.txt", "")
    write(tmp_path / "e2.jsonl", "\n\n")
    with pytest.raises(ValueError, match="the corpus is empty"):
        corpus.load_files(str(tmp_path / "*"))


def test_unknown_source_and_ignored_path():
    with pytest.raises(ValueError, match="data.source='web'"):
        corpus.load_corpus({"source": "web"})
    with pytest.raises(ValueError, match="data.path='my/data/\\*.txt' is set but data.source='stdlib'"):
        corpus.load_corpus({"source": "stdlib", "path": "my/data/*.txt"})


def docs(n):
    return [corpus.Document(f"dir/file_{i:03d}.py", b"x") for i in range(n)]


def test_split_by_document_disjoint_deterministic_order_independent():
    all_docs = docs(200)
    train, val = corpus.split_documents(all_docs, 0.1)
    names_t, names_v = {d.name for d in train}, {d.name for d in val}
    assert len(val) == 20 and not names_t & names_v and names_t | names_v == {d.name for d in all_docs}
    assert [d.name for d in train] == sorted(names_t)  # input order kept
    assert corpus.split_documents(all_docs, 0.1) == (train, val)
    _, val_rev = corpus.split_documents(all_docs[::-1], 0.1)
    assert {d.name for d in val_rev} == names_v


def test_split_edge_cases():
    assert len(corpus.split_documents(docs(3), 0.02)[1]) == 1  # at least one val document
    assert corpus.split_documents(docs(3), 0.0) == (tuple(docs(3)), ())
    with pytest.raises(ValueError, match="corpus has 1 document"):
        corpus.split_documents(docs(1), 0.02)
    with pytest.raises(ValueError, match="data.val_fraction=1.5"):
        corpus.split_documents(docs(5), 1.5)


def test_stdlib_listing_is_sorted_and_pruned():
    names = corpus.stdlib_files(corpus.stdlib_root())
    assert names == sorted(names) and len(names) > 300
    assert all(n.endswith(".py") for n in names)
    pruned = set(corpus.STDLIB_PRUNED_DIRS)
    assert not any(pruned & set(n.split("/")[:-1]) for n in names)
    assert "os.py" in names and "json/decoder.py" in names


def test_stdlib_loads_quickly():
    start = time.perf_counter()
    small = corpus.load_stdlib(max_files=25)
    full = corpus.load_stdlib()
    assert time.perf_counter() - start < 10.0
    assert len(small.documents) <= 25 and small.documents == full.documents[: len(small.documents)]
    assert full.num_bytes > 5_000_000 and f"Python {sys.version.split()[0]}" in full.summary()


def test_stdlib_skips_and_counts_non_utf8(tmp_path):
    write(tmp_path / "good.py", "x = 1\n")
    write(tmp_path / "bad.py", b"# -*- coding: latin-1 -*-\ns = '\xe9'\n")
    write(tmp_path / "test" / "test_x.py", "pruned\n")
    c = corpus.load_stdlib(root=str(tmp_path))
    assert [d.name for d in c.documents] == ["good.py"]
    assert c.skipped == ("bad.py: not UTF-8",) and "1 files skipped (bad.py: not UTF-8)" in c.summary()


def test_synthetic_is_deterministic_and_exact_size():
    a = synthetic.documents(10_000, seed=1)
    assert a == synthetic.documents(10_000, seed=1) != synthetic.documents(10_000, seed=2)
    assert sum(len(t) for _, t in a) == 10_000
    assert all(t.isascii() for _, t in a)
    c = corpus.load_corpus({"source": "synthetic", "synthetic_bytes": 5000})
    assert c.num_bytes == 5000


def fake_datasets(load_dataset):
    return types.SimpleNamespace(load_dataset=load_dataset)


class FakeRows:
    column_names = ["text", "label"]

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        return [r[key] for r in self.rows]

    def select(self, idx):
        return FakeRows([self.rows[i] for i in idx])


def test_hf_errors_and_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(ValueError, match="pip install datasets"):
        corpus.load_corpus({"source": "hf", "path": "some/dataset"})

    def offline(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(offline))
    with pytest.raises(ValueError, match="'some/dataset'.*ConnectionError: no network.*network access"):
        corpus.load_corpus({"source": "hf", "path": "some/dataset"})

    rows = FakeRows([{"text": "héllo", "label": 0}, {"text": "", "label": 1}, {"text": "b", "label": 2}])
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(lambda name, config, split: rows))
    c = corpus.load_corpus({"source": "hf", "path": "some/dataset", "max_docs": 2})
    assert [(d.name, d.text) for d in c.documents] == [("train/0", "héllo".encode())] and c.num_empty == 1
    with pytest.raises(ValueError, match="no column 'body'"):
        corpus.load_corpus({"source": "hf", "path": "some/dataset", "text_field": "body"})
