r"""Builds the lesson notebook: docs/lesson.py -> docs/lesson.ipynb, with outputs.

The lesson's source is docs/lesson.py, a jupytext percent-format script. This
script turns it into a notebook (jupytext), executes it top to bottom in a
fresh kernel (nbclient, kernel `python3`, working directory docs/) in the
given setting, and writes it with its outputs. The notebook's last cell
reports how long it ran; this script also prints the wall time, kernel start
included. Run it from a fresh clone with

    python3 dev.py lesson

or, inside the virtual environment,

    python scripts/build_lesson.py --setting=full --output=docs/lesson.ipynb

MNIST is read from KERAS_SG_MNIST_DIR when set (dev.py sets it on this
project's machines), else downloaded by tensorflow-datasets.
"""

import os
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "lesson.py"
SETTINGS = ("small", "full")

FLAGS = flags.FLAGS
flags.DEFINE_enum("setting", "full", SETTINGS, "The lesson's setting.")
flags.DEFINE_string("output", str(ROOT / "docs" / "lesson.ipynb"), "Notebook to write.")
flags.DEFINE_integer(
    "cell_timeout", 3600, "Seconds a cell may run before the build stops."
)


def source_notebook(path: str | os.PathLike = SOURCE):
    """Reads the lesson's jupytext source as a notebook (without outputs)."""
    import jupytext

    return jupytext.read(os.fspath(path))


def execute(notebook, setting: str, cell_timeout: int, cwd=SOURCE.parent) -> float:
    """Executes `notebook` in place in a fresh `python3` kernel.

    Args:
        notebook: an nbformat notebook; its outputs are replaced.
        setting: "small" or "full", passed to the kernel as
            KERAS_SG_LESSON_SETTING.
        cell_timeout: seconds a cell may run before nbclient stops it.
        cwd: the kernel's working directory (docs/, where the notebook lives
            and imports docs/lesson_solutions.py from).

    Returns:
        The wall time in seconds, kernel start included.

    Raises:
        ValueError: `setting` is not one of SETTINGS.
        nbclient.exceptions.CellExecutionError: a cell raised.
    """
    from nbclient import NotebookClient

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}. Received: {setting=}")
    previous = os.environ.get("KERAS_SG_LESSON_SETTING")
    os.environ["KERAS_SG_LESSON_SETTING"] = setting  # the kernel inherits it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    try:
        NotebookClient(
            notebook,
            timeout=cell_timeout,
            kernel_name="python3",
            resources={"metadata": {"path": os.fspath(cwd)}},
        ).execute()
    finally:
        if previous is None:
            del os.environ["KERAS_SG_LESSON_SETTING"]
        else:
            os.environ["KERAS_SG_LESSON_SETTING"] = previous
    return time.perf_counter() - started


def main(argv):
    del argv
    import nbformat

    notebook = source_notebook()
    print(f"build_lesson: executing {SOURCE.name} in the {FLAGS.setting} setting")
    seconds = execute(notebook, FLAGS.setting, FLAGS.cell_timeout)
    nbformat.write(notebook, FLAGS.output)
    print(
        f"build_lesson: wrote {FLAGS.output} ({seconds:.0f} s, kernel start included)"
    )


if __name__ == "__main__":
    app.run(main)
