"""Smoke test of the quick-start demo on mock MNIST."""

from pathlib import Path

import tensorflow_datasets as tfds
from conftest import script_module

from keras_sg.data import tfds_images

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_demo_smoke_prints_a_row_per_method(capsys, monkeypatch):
    # Mock MNIST is random (it would fail the check against the real one)
    # and needs no download server.
    monkeypatch.setattr(tfds_images, "verify_split", lambda *args: None)
    monkeypatch.setattr(tfds_images, "_reachable", lambda url: True)
    with script_module(DEMO, "keras_sg_demo") as demo:
        demo.FLAGS(
            ["demo", "--epochs=1", "--batch_size=16", "--verbose=0", "--mnist_dir="]
        )
        with tfds.testing.mock_data(num_examples=64):
            demo.main([])
        demo.FLAGS.unparse_flags()
    out = capsys.readouterr().out
    rows = [
        line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["backprop"], ["dni"], ["cdni"])
    ]
    assert [row[0] for row in rows] == ["backprop", "dni", "cdni"]
    for row in rows:
        assert 0.0 <= float(row[1]) <= 1.0
        assert float(row[3]) > 0.0
