"""Penn Treebank at the character level, for truncated BPTT.

The files are Mikolov's `ptb.char.{train,valid,test}.txt` (simple-examples),
checked against their sha256 when read. In them every character is followed
by one space, the newline that ends each sentence included, and words are
joined by `_`: the file `"a _ b \\n c \\n "` is the text `"a_b\\nc\\n"`. The
character stream is that text: the letters, `_` at word boundaries and `\\n`
at sentence ends (the end-of-sentence symbol); `<unk>` stays five characters.
The vocabulary is the sorted set of characters of the training text (50 for
PTB: 49 symbols and `\\n`); valid and test use only these.

The DNI paper (Jaderberg et al. 2016, arXiv:1608.05343, Section 3.2) trains
an LSTM on this stream with truncated BPTT and reports bits per character:
`stream_bits_per_character` measures them over a whole stream, the state
carried from one window to the next.
"""

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow as tf

from keras_sg._checks import check_int

PTB_DIR_VARIABLE = "KERAS_SG_PTB_DIR"
SPLITS = ("train", "valid", "test")
# sha256 of the original files (/work/shared/data/ptb/README.md, byte-identical
# to simple-examples' data/).
PTB_CHAR_SHA256 = {
    "ptb.char.train.txt": (
        "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9"
    ),
    "ptb.char.valid.txt": (
        "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8"
    ),
    "ptb.char.test.txt": (
        "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe"
    ),
}


def ptb_file(split: str) -> str:
    """The file name of a split: "train" -> "ptb.char.train.txt"."""
    if split not in SPLITS:
        raise ValueError(f"Expected a split in {SPLITS}. Received: split={split!r}")
    return f"ptb.char.{split}.txt"


def ptb_dir_from_env() -> str | None:
    """The folder that `KERAS_SG_PTB_DIR` names, or None when unset or empty."""
    return os.environ.get(PTB_DIR_VARIABLE) or None


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str, expected: str):
    """Raises ValueError, naming the file and both digests, when the sha256
    of `path` is not `expected`."""
    received = file_sha256(path)
    if received != expected:
        raise ValueError(
            f"{path} is not the original file: its sha256 is {received}, expected "
            f"{expected}. Replace it with the original (see the PTB README). "
            f"Received: sha256={received}"
        )


def read_char_file(path: str) -> str:
    """The character text of a PTB char file: every second byte, once each
    separating byte is checked to be a space.

    Raises:
        ValueError: the file is not in that format, naming the file and the
            first offending byte offset.
    """
    with open(path, "rb") as f:
        content = f.read()
    if len(content) % 2:
        raise ValueError(
            f"{path} is not a PTB char file: every character is followed by a "
            f"space, so its size is even. Received: {len(content)} bytes"
        )
    separators = np.frombuffer(content[1::2], np.uint8)
    bad = np.flatnonzero(separators != ord(" "))
    if bad.size:
        offset = 2 * int(bad[0]) + 1
        raise ValueError(
            f"{path} is not a PTB char file: every character is followed by a "
            f"space. Received: byte {content[offset : offset + 1]!r} at offset "
            f"{offset}"
        )
    try:
        return content[0::2].decode("ascii")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not a PTB char file: expected ASCII. Received: {error}"
        ) from None


def char_vocabulary(text: str) -> list[str]:
    """The sorted distinct characters of `text` (an id is an index here)."""
    return sorted(set(text))


def encode_chars(text: str, vocabulary: list[str]) -> np.ndarray:
    """The ids of `text`'s characters in `vocabulary`, int32.

    Raises:
        ValueError: a character is not in the vocabulary, naming it.
    """
    index = {c: i for i, c in enumerate(vocabulary)}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(
            f"Characters outside the vocabulary {vocabulary}. Received: {unknown}"
        )
    lookup = np.zeros(128, np.int32)
    if all(ord(c) < 128 for c in vocabulary):
        for c, i in index.items():
            lookup[ord(c)] = i
        return lookup[np.frombuffer(text.encode("ascii"), np.uint8)]
    return np.array([index[c] for c in text], np.int32)


@dataclasses.dataclass
class CharCorpus:
    """The three splits as id arrays and the vocabulary they index."""

    vocabulary: list[str]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def load_ptb_chars(
    folder: str | None = None, *, digests: dict[str, str] | None = PTB_CHAR_SHA256
) -> CharCorpus:
    """Reads `ptb.char.{train,valid,test}.txt`, checked, as id streams.

    Args:
        folder: the folder holding the three files; None reads the variable
            `KERAS_SG_PTB_DIR`.
        digests: the sha256 each file must have, by file name (the original
            files' by default); None checks nothing (for generated text).

    Returns:
        A `CharCorpus`: the vocabulary of the training text (see the module
        docstring) and each split's ids, int32 of shape (characters,).

    Raises:
        FileNotFoundError: no folder, or a file missing, naming the folder,
            the files and the variable.
        ValueError: a file's digest or format is wrong, or valid/test use a
            character the training text lacks.
    """
    files = [ptb_file(split) for split in SPLITS]
    if folder is None:
        folder = ptb_dir_from_env()
        if folder is None:
            raise FileNotFoundError(
                f"No PTB folder: give `folder` or set {PTB_DIR_VARIABLE} to a folder "
                f"holding {files}. Received: folder=None"
            )
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"The PTB folder lacks {missing}: it must hold {files} (the folder "
            f"comes from `folder` or {PTB_DIR_VARIABLE}). Received: folder={folder!r}"
        )
    texts = {}
    for split, name in zip(SPLITS, files, strict=True):
        path = os.path.join(folder, name)
        if digests is not None:
            verify_sha256(path, digests[name])
        texts[split] = read_char_file(path)
    vocabulary = char_vocabulary(texts["train"])
    return CharCorpus(
        vocabulary, *(encode_chars(texts[split], vocabulary) for split in SPLITS)
    )


def bptt_windows(ids: np.ndarray, batch_size: int, seq_len: int):
    """Cuts an id stream into windows for truncated BPTT.

    The stream is split into `batch_size` contiguous streams of
    L = len(ids) // batch_size ids each (the remainder dropped), stream r
    being ids[r L : (r + 1) L]. Window w holds, for each stream r, the inputs
    stream_r[w T : (w + 1) T] and the targets one step later,
    stream_r[w T + 1 : (w + 1) T + 1], with T = `seq_len`; there are
    (L - 1) // T windows. Row r of window w + 1 continues row r of window w,
    so a recurrent state carried from one window to the next follows the
    same text (Zaremba et al. 2014, arXiv:1409.2329, reader.py).

    Returns:
        `(inputs, targets)`: int32, each (windows, batch_size, seq_len).

    Raises:
        ValueError: the stream is too short for one window.
    """
    check_int("batch_size", batch_size, 1)
    check_int("seq_len", seq_len, 1)
    ids = np.asarray(ids)
    length = len(ids) // batch_size
    windows = (length - 1) // seq_len if length else 0
    if windows < 1:
        raise ValueError(
            f"The stream of {len(ids)} ids is too short for one window of "
            f"batch_size={batch_size} streams of seq_len={seq_len} steps (it needs "
            f"batch_size * (seq_len + 1) = {batch_size * (seq_len + 1)} ids). "
            f"Received: len(ids)={len(ids)}"
        )
    streams = ids[: length * batch_size].reshape(batch_size, length).astype(np.int32)
    span = windows * seq_len
    inputs = streams[:, :span].reshape(batch_size, windows, seq_len)
    targets = streams[:, 1 : span + 1].reshape(batch_size, windows, seq_len)
    return inputs.transpose(1, 0, 2).copy(), targets.transpose(1, 0, 2).copy()


def bptt_dataset(ids: np.ndarray, batch_size: int, seq_len: int) -> tf.data.Dataset:
    """`bptt_windows` as a tf.data pipeline of `(inputs, targets)` batches,
    in order (never shuffled: consecutive batches continue the same streams).
    One pass is one epoch over the stream."""
    inputs, targets = bptt_windows(ids, batch_size, seq_len)
    return tf.data.Dataset.from_tensor_slices((inputs, targets))


def char_bits(logits, targets) -> np.ndarray:
    """The bits each character costs a model: −log₂ p(target), p the softmax
    of `logits`.

    Args:
        logits: `(..., vocabulary)`, the model's scores of the next character.
        targets: the next characters' ids, the shape of `logits` without its
            last axis.

    Returns:
        float64 of the shape of `targets`.

    Raises:
        ValueError: the shapes do not pair, or an id is outside the
            vocabulary.
    """
    logits = np.asarray(logits, np.float64)
    targets = np.asarray(targets)
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(
            "Expected logits of shape targets.shape + (vocabulary,). Received: "
            f"logits of shape {logits.shape}, targets of shape {targets.shape}"
        )
    vocabulary = logits.shape[-1]
    if targets.size and (targets.min() < 0 or targets.max() >= vocabulary):
        raise ValueError(
            f"Expected target ids in [0, {vocabulary}), the logits' vocabulary. "
            f"Received: ids from {targets.min()} to {targets.max()}"
        )
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    picked = np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
    return (log_norm - picked) / np.log(2.0)


def stream_bits_per_character(
    model, ids: np.ndarray, batch_size: int, seq_len: int, carry_state: bool = True
) -> float:
    """Bits per character of a character model over a whole stream.

    The stream is laid out by `bptt_windows(ids, batch_size, seq_len)`:
    `batch_size` parallel streams, scored window by window with the state
    carried from one window to the next and reset only where each stream
    starts (`model.run_stream`). This is the usual measure on Penn Treebank
    (Zaremba et al. 2014, arXiv:1409.2329; Jaderberg et al. 2016,
    arXiv:1608.05343, Section 3.2): it credits what the network carries
    over more than `seq_len` characters. `carry_state=False` resets the state
    at every window instead, the number `evaluate` gives on `bptt_dataset`
    (its loss divided by ln 2).

    Args:
        model: a `keras_sg.TruncatedBPTTModel` (anything with its
            `run_stream`) whose network maps character ids to logits over
            the vocabulary.
        ids: the stream, int, `(characters,)`.
        batch_size: the number of parallel streams.
        seq_len: the characters per window.
        carry_state: carry the state across windows (True, the usual
            measure) or reset it at each window.

    Returns:
        The mean over the scored characters of −log₂ p(next character).
        The scored characters are `bptt_windows`' targets: windows *
        batch_size * seq_len of them (a stream's last few are dropped).

    Raises:
        ValueError: the stream is too short for one window, or the logits
            do not pair with the targets.
    """
    inputs, targets = bptt_windows(ids, batch_size, seq_len)
    if not callable(getattr(model, "run_stream", None)):
        raise TypeError(
            "stream_bits_per_character needs a model with `run_stream`, such "
            f"as keras_sg.TruncatedBPTTModel. Received: {type(model).__name__}"
        )
    total = 0.0
    outputs = model.run_stream(inputs, carry_state=carry_state)
    for logits, window_targets in zip(outputs, targets, strict=True):
        total += float(char_bits(np.asarray(logits), window_targets).sum())
    return total / targets.size
