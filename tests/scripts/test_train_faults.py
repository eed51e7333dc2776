"""scripts/train.py under faults: bad inputs, divergence, kills, a second run.

Every case ends in a one-line error and exit status 1, or in a resumed run
that loses no finite checkpoint. Every subprocess has a timeout.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from keras_sg.callbacks import checkpoint

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train.py"
SMOKE = [
    "--config=configs/mnist_fcn.py:dni,smoke",
    "--config.log.diagnostics_every_steps=0",
]
# SGD at rate 1 with sg_loss_weight 10, as in issue 9: the synthesizer at cut_1
# blows up in epoch 1 (loss ~1e18) and is NaN at the first batch of epoch 2.
DIVERGING = [
    *SMOKE,
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=1",
    "--config.sg_loss_weight=10",
    "--config.epochs=4",
    "--config.keep_checkpoints=1",
]
# Backprop with SGD at rate 25: every loss stays finite, but the epoch means
# go 77.5, 4.78, 5.82, then blow up in epoch 4 (163.9 at its first batch; 164.4
# on an AVX2 machine, whose kernels sum in another order).
BLOWING_UP = [
    "--config=configs/mnist_fcn.py:backprop,smoke",
    "--config.log.diagnostics_every_steps=0",
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=25",
    "--config.epochs=5",
    "--config.keep_checkpoints=1",
]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")


def _run(args, timeout=120):
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
    )


def _start(args):
    return subprocess.Popen(
        [sys.executable, str(TRAIN), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        cwd=ROOT,
    )


def _wait_for(condition, process, seconds=120, what=""):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"training ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {seconds}s"
        time.sleep(0.002)


def _error_line(done):
    """The run's one-line error: its last line on stderr, with no traceback."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def _strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{path} holds a bare {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


BEFORE_TRAINING = [
    # (extra args, workdir below tmp_path, what the error line must say)
    (["--config=configs/missing.py:smoke"], "wd", "No such file or directory"),
    (["--config=configs/mnist_fcn.py:dni,smoke,dpeth=3"], "wd", "'dpeth'"),
    ([*SMOKE, "--config.epochs=2.5"], "wd", "--config.epochs=2.5"),
    ([*SMOKE, "--config.keep_checkpoints=-1"], "wd", "keep_checkpoints=-1"),
    ([*SMOKE, "--config.keep_checkpoints=0"], "wd", "keep_checkpoints=0"),
    ([*SMOKE, "--config.sg_loss_weight=inf"], "wd", "sg_loss_weight=inf"),
    ([*SMOKE, "--config.optimizer.name=adamm"], "wd", "optimizer.name='adamm'"),
    ([*SMOKE, "--config.rollbacks=-1"], "wd", "rollbacks=-1"),
    (
        [*SMOKE, "--config.rollbacks=1", "--config.max_loss_growth=0"],
        "wd",
        "`rollbacks` must be 0 when max_loss_growth is 0",
    ),
    (SMOKE, "a_file", "is a file; expected a folder"),
    (SMOKE, "a_file/wd", "a_file is a file"),  # a workdir that cannot be made
]


@pytest.mark.parametrize(
    "args, workdir, said", BEFORE_TRAINING, ids=[c[2] for c in BEFORE_TRAINING]
)
def test_errors_before_training_are_one_line_and_create_nothing(
    tmp_path, args, workdir, said
):
    (tmp_path / "a_file").write_text("not a folder")
    done = _run([*args, f"--workdir={tmp_path / workdir}"], timeout=60)
    line = _error_line(done)
    assert line.startswith("train.py: ") and said in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_a_finite_blow_up_stops_with_max_loss_growth(tmp_path):
    done = _run([*BLOWING_UP, "--config.max_loss_growth=5", f"--workdir={tmp_path}"])
    line = _error_line(done)
    # The losses' digits differ from one CPU to another (AVX2 or AVX-512
    # kernels sum in other orders); what the message says of them must not.
    said = re.fullmatch(
        r"train\.py: Training diverged in epoch 4, batch 1: the task loss "
        r"\(loss=(?P<loss>[0-9.]+)\) is (?P<times>[0-9.]+) times its lowest "
        r"epoch mean \((?P<lowest>[0-9.]+), epoch (?P<epoch>[0-9]+)\), above "
        r"max_growth=5\.0\. Newest finite checkpoint: (?P<kept>.+)",
        line,
    )
    assert said, line
    loss, times, lowest = (float(said[k]) for k in ("loss", "times", "lowest"))
    assert said["kept"] == str(tmp_path / "ckpt" / "epoch-0003.keras")
    assert 1 <= int(said["epoch"]) <= 3
    assert times > 5 and loss > 5 * lowest
    assert times == pytest.approx(loss / lowest, rel=2e-3)
    # The epoch that blew up is not saved, so it pushed nothing out.
    assert [n for n, _ in checkpoint.checkpoint_files(tmp_path / "ckpt")] == [3]
    metrics = _strict_json(tmp_path / "metrics.json")
    assert metrics["status"] == "diverged"
    assert metrics["diverged"]["reason"] == "grew"
    assert float(metrics["diverged"]["losses"]["loss"]) == pytest.approx(loss, rel=1e-3)
    assert metrics["steps"] == 3 * 8 + 1
    # Off, the same run goes to its end: the guard is what stopped it.
    off = tmp_path / "off"
    done = _run([*BLOWING_UP, "--config.max_loss_growth=0", f"--workdir={off}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert _strict_json(off / "metrics.json")["status"] == "finished"


def _state(path: Path):
    """The values of every variable training changes, in a saved model."""
    from keras_sg.callbacks import training_state

    model = keras.models.load_model(path)
    return [keras.ops.convert_to_numpy(v) for v in training_state(model)]


def _assert_same_state(path, other):
    mine, theirs = _state(path), _state(other)
    assert len(mine) == len(theirs) > 10
    for a, b in zip(mine, theirs, strict=True):
        assert a.shape == b.shape and (a == b).all()


def test_rollbacks_undo_a_blown_up_epoch_and_save_what_they_put_back(tmp_path):
    """BLOWING_UP's epoch 4 (epoch mean 33.9 here, 7 times epoch 2's) is
    undone at its end, and epoch 4's checkpoint holds epoch 3's state,
    variable by variable: where the run went on from, and where a resume
    goes on from. Epoch 5 starts from that state; whether it blows up again
    (26.8 here, 5.6 times) depends on the CPU's sums, and either way the run
    ends sound, with a second rollback if it did."""
    done = _run(
        [
            *BLOWING_UP[:-1],
            "--config.keep_checkpoints=5",
            "--config.max_loss_growth=5",
            "--config.rollbacks=2",
            f"--workdir={tmp_path}",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(
        r"^Training diverged in epoch 4: the task loss \(loss=[0-9.]+\) is "
        r"[0-9.]+ times its lowest epoch mean \([0-9.]+, epoch 2\), above "
        r"max_growth=5\.0\. Rolled back to the end of epoch 3 \(rollback 1 of "
        r"2\); training goes on\.$",
        done.stdout,
        re.MULTILINE,
    ), done.stdout
    metrics = _strict_json(tmp_path / "metrics.json")
    assert metrics["status"] == "finished"
    first, *again = metrics["rollbacks"]
    assert (first["epoch"], first["restored_epoch"]) == (4, 3)
    assert first["reason"] == "grew" and float(first["losses"]["loss"]) > 5
    assert first["message"].startswith("Training diverged in epoch 4: ")
    assert [(r["epoch"], r["restored_epoch"]) for r in again] in ([], [(5, 3)])
    # Epoch 4's steps were undone, and epoch 5's if it was rolled back.
    assert metrics["steps"] == (3 if again else 4) * 8
    ckpt = tmp_path / "ckpt"
    assert [n for n, _ in checkpoint.checkpoint_files(ckpt)] == [1, 2, 3, 4, 5]
    _assert_same_state(ckpt / "epoch-0004.keras", ckpt / "epoch-0003.keras")
    if again:
        _assert_same_state(ckpt / "epoch-0005.keras", ckpt / "epoch-0003.keras")
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 5  # undone epochs keep the rows they logged


def test_rollbacks_used_up_stop_the_run_after_a_saved_rollback(tmp_path):
    """DIVERGING with one rollback: epoch 2 is NaN and undone (its file, the
    state of epoch 1, is saved although its losses were NaN); epoch 3, from
    that state, is NaN again and stops the run."""
    done = _run(
        [
            *DIVERGING[:-1],
            "--config.keep_checkpoints=4",
            "--config.rollbacks=1",
            f"--workdir={tmp_path}",
        ]
    )
    line = _error_line(done)
    assert line.startswith("train.py: Training diverged in epoch 3: the synthesizer")
    assert line.endswith(
        f"Newest finite checkpoint: {tmp_path / 'ckpt' / 'epoch-0002.keras'}"
    )
    metrics = _strict_json(tmp_path / "metrics.json")
    assert metrics["status"] == "diverged" and metrics["diverged"]["epoch"] == 3
    (rollback,) = metrics["rollbacks"]
    assert (rollback["epoch"], rollback["restored_epoch"]) == (2, 1)
    assert rollback["reason"] == "not finite"
    ckpt = tmp_path / "ckpt"
    assert [n for n, _ in checkpoint.checkpoint_files(ckpt)] == [1, 2]
    _assert_same_state(ckpt / "epoch-0002.keras", ckpt / "epoch-0001.keras")


def test_divergence_stops_names_the_cut_and_keeps_the_finite_checkpoint(tmp_path):
    done = _run([*DIVERGING, f"--workdir={tmp_path}"])
    line = _error_line(done)
    assert line == (
        "train.py: Training diverged in epoch 2, batch 1: the synthesizer loss "
        "at cut_1 (cut_1_sg_loss=nan) is not finite. Newest finite checkpoint: "
        f"{tmp_path / 'ckpt' / 'epoch-0001.keras'}"
    )
    # keep_checkpoints=1, yet the NaN epoch did not push out the finite one.
    assert [n for n, _ in checkpoint.checkpoint_files(tmp_path / "ckpt")] == [1]
    model = keras.models.load_model(tmp_path / "ckpt" / "epoch-0001.keras")
    assert int(model.optimizer.iterations.numpy()) == 8
    assert checkpoint.all_finite(model)
    metrics = _strict_json(tmp_path / "metrics.json")
    assert metrics["status"] == "diverged"
    assert metrics["diverged"]["losses"] == {"cut_1_sg_loss": "nan"}
    assert (metrics["diverged"]["epoch"], metrics["diverged"]["batch"]) == (2, 1)
    assert metrics["steps"] == 9  # stopped at the first NaN batch

    # Item 1 of issue 9: rerun on this workdir with another model.
    changed = _run(
        [
            *DIVERGING,
            "--config.model.depth=4",
            "--config.sg_loss_weight=1",
            f"--workdir={tmp_path}",
        ],
        timeout=60,
    )
    line = _error_line(changed)
    assert "differing fields (recorded -> now): model.depth=3 -> 4, " in line
    assert "sg_loss_weight=10.0 -> 1.0." in line
    assert json.loads((tmp_path / "config.json").read_text())["sg_loss_weight"] == 10


def test_lock_then_sigkill_mid_write_then_a_damaged_file_then_resume(tmp_path):
    """One long run: a second run on its workdir is refused; the run is killed
    while it writes a checkpoint; the newest whole file is then damaged; a
    rerun with fewer epochs (a field safe to change) is not blocked by the
    dead run's lock, names the damaged file and resumes from the one before."""
    ckpt, lock = tmp_path / "ckpt", tmp_path / "lock"
    args = [*SMOKE, "--config.epochs=200", f"--workdir={tmp_path}"]
    first = _start(args)
    try:
        _wait_for(
            lambda: (ckpt / "epoch-0001.keras").exists(), first, what="a checkpoint"
        )
        assert lock.read_text() == f"{first.pid}\n"
        history = (tmp_path / "history.csv").read_text()
        second = _run(args, timeout=60)
        assert _error_line(second) == (
            f"train.py: --workdir={tmp_path} is in use by another run (process "
            f"{first.pid}); wait for it to end, or choose another workdir"
        )
        assert (tmp_path / "history.csv").read_text().startswith(history)
        # Kill while epoch 3 or later is being written (two whole files exist).
        _wait_for(
            lambda: any(
                p.name >= ".partial-epoch-0003" for p in ckpt.glob(".partial-*")
            ),
            first,
            what="checkpoint write of epoch >= 3",
        )
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    files = checkpoint.checkpoint_files(ckpt)
    assert len(files) == 2 and all(checkpoint.damage(p) is None for _, p in files)
    assert list(ckpt.glob(".partial-*"))  # the write that was cut short
    assert lock.read_text() == f"{first.pid}\n"  # left behind, but unlocked

    (older, _), (newest, path) = files
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 3])
    done = _run([*args[:-2], f"--config.epochs={newest}", f"--workdir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"Checkpoint {path} is damaged: not a complete .keras archive "
        f"({len(whole) // 3} bytes; truncated?); falling back to the one before"
    ) in done.stdout
    assert f"Resuming {tmp_path} from epoch {older}" in done.stdout
    assert not list(ckpt.glob(".partial-*"))
    assert lock.read_text() != f"{first.pid}\n"
    metrics = _strict_json(tmp_path / "metrics.json")
    assert metrics["status"] == "finished" and metrics["epochs"] == newest
    assert metrics["resumed_from_epoch"] == older and metrics["steps"] == 8 * newest
    assert 0 <= metrics["test_accuracy"] <= 1
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == newest
    assert checkpoint.damage(path) is None  # rewritten whole by the resumed run


def test_a_workdir_that_cannot_be_written_is_refused_before_training(tmp_path):
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    if os.access(read_only, os.W_OK):  # root ignores modes: a read-only mount
        read_only = Path("/proc/sys")
    if os.access(read_only, os.W_OK):
        pytest.skip("no folder here that this user cannot write")
    done = _run([*SMOKE, f"--workdir={read_only / 'wd'}"], timeout=60)
    assert _error_line(done) == (
        f"train.py: cannot write into --workdir={read_only / 'wd'}: "
        f"{read_only} is not writable"
    )
    assert not (read_only / "wd").exists()
