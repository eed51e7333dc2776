"""Penn Treebank characters: the file format, the vocabulary and the id
streams on tiny generated text, the digest check, the folder from the
environment, the truncated-BPTT layout by hand; the real files when present."""

import os
from pathlib import Path

import numpy as np
import pytest

from keras_sg import data

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
PTB_DIR = Path(os.environ.get("KERAS_SG_PTB_DIR", SHARED / "ptb"))
CHAR_FILES = ["ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt"]

# Sentences as the char files hold them: words joined by "_", "\n" at the end.
TEXTS = {
    "train": "ab_c\nba\n",
    "valid": "c_a\n",
    "test": "b\n",
}


def spaced(text: str) -> bytes:
    """The char-file form of `text`: each character followed by a space."""
    return "".join(c + " " for c in text).encode("ascii")


def write_corpus(folder: Path, texts=TEXTS) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    for split, text in texts.items():
        (folder / data.ptb_file(split)).write_bytes(spaced(text))
    return {
        data.ptb_file(split): data.file_sha256(str(folder / data.ptb_file(split)))
        for split in texts
    }


def test_tiny_corpus_vocabulary_and_ids_by_hand(tmp_path):
    digests = write_corpus(tmp_path / "ptb")
    assert (tmp_path / "ptb" / "ptb.char.train.txt").read_bytes() == (
        b"a b _ c \n b a \n "
    )
    corpus = data.load_ptb_chars(str(tmp_path / "ptb"), digests=digests)
    # Sorted characters of the training text: "\n" < "_" < "a" < "b" < "c".
    assert corpus.vocabulary == ["\n", "_", "a", "b", "c"]
    np.testing.assert_array_equal(corpus.train, [2, 3, 1, 4, 0, 3, 2, 0])
    np.testing.assert_array_equal(corpus.valid, [4, 1, 2, 0])
    np.testing.assert_array_equal(corpus.test, [3, 0])
    assert corpus.train.dtype == np.int32


def test_read_char_file_refuses_another_format(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes(b"a b_c \n ")
    with pytest.raises(ValueError, match=r"words.txt.*b'_' at offset 3"):
        data.read_char_file(str(path))
    path.write_bytes(b"a b")
    with pytest.raises(ValueError, match="Received: 3 bytes"):
        data.read_char_file(str(path))


def test_a_modified_file_fails_the_digest_check_naming_both_digests(tmp_path):
    digests = write_corpus(tmp_path / "ptb")
    path = tmp_path / "ptb" / "ptb.char.valid.txt"
    path.write_bytes(spaced("c_b\n"))  # one character changed
    received = data.file_sha256(str(path))
    expected = digests["ptb.char.valid.txt"]
    assert received != expected
    with pytest.raises(ValueError) as error:
        data.load_ptb_chars(str(tmp_path / "ptb"), digests=digests)
    message = str(error.value)
    assert str(path) in message
    assert f"expected {expected}" in message and f"sha256 is {received}" in message


def test_the_original_digests_refuse_generated_text(tmp_path):
    write_corpus(tmp_path / "ptb")
    with pytest.raises(ValueError, match="ptb.char.train.txt is not the original"):
        data.load_ptb_chars(str(tmp_path / "ptb"))


def test_folder_from_the_variable_and_clear_errors(tmp_path, monkeypatch):
    digests = write_corpus(tmp_path / "ptb")
    monkeypatch.setenv("KERAS_SG_PTB_DIR", str(tmp_path / "ptb"))
    assert data.ptb_dir_from_env() == str(tmp_path / "ptb")
    assert data.load_ptb_chars(digests=digests).vocabulary == ["\n", "_", "a", "b", "c"]
    monkeypatch.setenv("KERAS_SG_PTB_DIR", "")
    with pytest.raises(FileNotFoundError, match="set KERAS_SG_PTB_DIR"):
        data.load_ptb_chars()
    (tmp_path / "ptb" / "ptb.char.test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['ptb.char.test.txt'\]"):
        data.load_ptb_chars(str(tmp_path / "ptb"), digests=None)


def test_a_character_outside_the_training_vocabulary_is_named(tmp_path):
    write_corpus(tmp_path / "ptb", {**TEXTS, "test": "bz\n"})
    with pytest.raises(ValueError, match=r"Received: \['z'\]"):
        data.load_ptb_chars(str(tmp_path / "ptb"), digests=None)


def test_bptt_windows_by_hand():
    # 23 ids, 2 streams of L = 11 (id 22 dropped), windows of T = 3:
    # (11 - 1) // 3 = 3 windows; targets one step later in the same stream.
    x, y = data.bptt_windows(np.arange(23), batch_size=2, seq_len=3)
    assert x.shape == y.shape == (3, 2, 3) and x.dtype == np.int32
    np.testing.assert_array_equal(
        x,
        [
            [[0, 1, 2], [11, 12, 13]],
            [[3, 4, 5], [14, 15, 16]],
            [[6, 7, 8], [17, 18, 19]],
        ],
    )
    np.testing.assert_array_equal(
        y,
        [
            [[1, 2, 3], [12, 13, 14]],
            [[4, 5, 6], [15, 16, 17]],
            [[7, 8, 9], [18, 19, 20]],
        ],
    )
    # 24 ids: L = 12 = 4 T, yet (12 - 1) // 3 = 3 windows: a 4th would need
    # a target past the end of its stream (ids 9..11 of stream 0 predicting
    # 10..12, and 12 begins stream 1).
    x24, y24 = data.bptt_windows(np.arange(24), batch_size=2, seq_len=3)
    assert x24.shape == (3, 2, 3)
    np.testing.assert_array_equal(y24[-1], [[7, 8, 9], [19, 20, 21]])
    ds = data.bptt_dataset(np.arange(23), batch_size=2, seq_len=3)
    seen = [(a.numpy(), b.numpy()) for a, b in ds]
    assert len(seen) == 3
    for w, (a, b) in enumerate(seen):
        np.testing.assert_array_equal(a, x[w])
        np.testing.assert_array_equal(b, y[w])


def test_bptt_windows_too_short_is_named():
    with pytest.raises(ValueError, match=r"needs batch_size \* \(seq_len \+ 1\) = 8"):
        data.bptt_windows(np.arange(7), batch_size=2, seq_len=3)
    with pytest.raises(ValueError, match="seq_len=0"):
        data.bptt_windows(np.arange(7), batch_size=2, seq_len=0)


needs_ptb = pytest.mark.skipif(
    not all((PTB_DIR / f).is_file() for f in CHAR_FILES),
    reason=f"no PTB char files at {PTB_DIR} (set KERAS_SG_PTB_DIR)",
)


@needs_ptb
def test_the_original_files_load_checked():
    corpus = data.load_ptb_chars(str(PTB_DIR))
    # The README's counts: characters (non-space, without "\n") plus one
    # "\n" per sentence; 49 symbols and "\n".
    assert len(corpus.train) == 4_975_414 + 42_068
    assert len(corpus.valid) == 389_672 + 3_370
    assert len(corpus.test) == 438_662 + 3_761
    assert len(corpus.vocabulary) == 50 and corpus.vocabulary[0] == "\n"
    for split, sentences in [("train", 42_068), ("valid", 3_370), ("test", 3_761)]:
        assert (getattr(corpus, split) == 0).sum() == sentences
    start = "".join(corpus.vocabulary[i] for i in corpus.train[:20])
    assert start == "aer_banknote_berlitz"
