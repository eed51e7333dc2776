"""The lesson: docs/lesson.py (its source), docs/lesson.ipynb (committed with
the outputs of the full setting) and docs/lesson_solutions.py.

The math tests run the notebook's own cells (those tagged "lesson-math"), not a
copy of them: what the reader sees is what is checked.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import script_module

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "lesson.py"
NOTEBOOK = ROOT / "docs" / "lesson.ipynb"
SOLUTIONS = ROOT / "docs" / "lesson_solutions.py"
BUILD = ROOT / "scripts" / "build_lesson.py"

jupytext = pytest.importorskip("jupytext", reason="jupytext is a dev extra")


def _tagged_cells(tag):
    """The sources of the code cells of docs/lesson.py tagged `tag`."""
    notebook = jupytext.read(SOURCE)
    return [
        cell.source
        for cell in notebook.cells
        if cell.cell_type == "code" and tag in cell.metadata.get("tags", [])
    ]


def _run_cells(tag):
    """Runs the cells tagged `tag` in a fresh namespace and returns it."""
    namespace = {"__name__": "lesson"}
    cells = _tagged_cells(tag)
    assert cells, f"no cell of {SOURCE.name} is tagged {tag!r}"
    for i, source in enumerate(cells):
        exec(compile(source, f"{SOURCE}:{tag}[{i}]", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def lesson():
    return _run_cells("lesson-math")


def test_lesson_numpy_dni_step_equals_keras_sg(lesson):
    # Three SGD steps at learning rate 0.5 from the same weights (nonzero
    # synthesizers) on the same batches; the helper asserts every weight.
    change, disagreement = lesson["check_against_keras_sg"](lesson["dni_step"], "dni")
    assert change > 0.1  # the weights did move: the comparison is not vacuous
    assert disagreement < 1e-5


def test_lesson_numpy_backprop_step_equals_keras_sg_backprop(lesson):
    # The baseline of the lesson's toy run: keras_sg's "backprop" leaves the
    # synthesizers alone, and so does backprop_step.
    change, disagreement = lesson["check_against_keras_sg"](
        lesson["backprop_step"], "backprop"
    )
    assert change > 0.1
    assert disagreement < 1e-5


def _solutions():
    spec = importlib.util.spec_from_file_location("lesson_solutions", SOLUTIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lesson_exercise_solution_equals_keras_sg_cdni(lesson):
    change, disagreement = lesson["check_against_keras_sg"](
        _solutions().cdni_step, "cdni"
    )
    assert change > 0.1
    assert disagreement < 1e-5


def test_lesson_exercise_solution_is_not_dni():
    # cDNI and DNI differ only in the synthesizers' input; with a zero label
    # block in M they would coincide, so the check above must see the label.
    lesson = _run_cells("lesson-math")
    rng = np.random.default_rng(0)
    p = lesson["init_params"](rng, 5, 4, 3, context=3, synth_scale=0.5)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 3, size=6)
    dni = {**p, "M1": p["M1"][:4], "M2": p["M2"][:4]}
    ours, _ = _solutions().cdni_step(p, x, y, 0.5)
    theirs, _ = lesson["dni_step"](dni, x, y, 0.5)
    assert np.abs(ours["W1"] - theirs["W1"]).max() > 1e-3


def test_lesson_exercise_is_left_for_the_reader():
    namespace = _run_cells("exercise")
    with pytest.raises(NotImplementedError, match="the exercise"):
        namespace["cdni_step"](None, None, None, 0.1)


def test_committed_notebook_has_the_cells_of_its_source():
    if not NOTEBOOK.exists():
        pytest.skip(f"{NOTEBOOK.name} is not built yet: python3 dev.py lesson")
    import nbformat

    committed = nbformat.read(NOTEBOOK, as_version=4)
    source = jupytext.read(SOURCE)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ], f"{NOTEBOOK.name} is stale: rebuild it with python3 dev.py lesson"


@pytest.mark.timeout(280)
def test_lesson_runs_top_to_bottom_in_the_small_setting_smoke():
    pytest.importorskip("nbclient", reason="nbclient is a dev extra")
    mnist = os.environ.get("KERAS_SG_MNIST_DIR")
    if not mnist or not Path(mnist).is_dir():
        pytest.skip(
            "the lesson reads MNIST from KERAS_SG_MNIST_DIR, which is not set "
            f"to a folder (KERAS_SG_MNIST_DIR={mnist!r})"
        )
    with script_module(BUILD, "keras_sg_build_lesson") as build:
        notebook = build.source_notebook(SOURCE)
        build.execute(notebook, "small", cell_timeout=240)
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("name") == "stdout"
    )
    assert "setting: small" in text
    assert "ran in the small setting" in text
