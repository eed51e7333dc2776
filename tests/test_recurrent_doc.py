"""docs/recurrent.md against the code: the names it quotes exist, the tests it
cites exist, its table of update dependencies is `update_dependencies`'s
output, its links and figure exist, and the results markers are in place."""

import inspect
import re
from pathlib import Path

import keras
import pytest

import keras_sg
from keras_sg import data, models
from keras_sg.data import ptb
from keras_sg.models import steps

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "recurrent.md"
# Another branch writes this script; the doc names it as the writer of the
# results section.
NOT_YET_HERE = {"scripts/reproduce_recurrent.py"}
# Quoted words that are math, log entries or Keras arguments, not keras_sg names.
NOT_CODE = {"|_j", "L_j", "\\n", "_", "aux_loss", "weighted_metrics"}


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: nothing here trains."""
    yield


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


@pytest.fixture(scope="module")
def whole():
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def text(whole):
    """The doc without its results section, which a script writes."""
    head, _, rest = whole.partition(BEGIN)
    return head + rest.partition(END)[2]


def _quoted(text):
    return sorted(set(re.findall(r"`([^`\n]+)`", text)))


def _resolve(dotted):
    """The object a dotted name in the doc names, or None."""
    heads = {
        "keras_sg": keras_sg,
        "steps": steps,
        "model": models.TruncatedBPTTModel,
        "optimizer": keras.optimizers.Optimizer,
    }
    first, *rest = dotted.split(".")
    candidates = [heads[first]] if first in heads else []
    for owner in (
        keras_sg,
        models,
        data,
        models.TruncatedBPTTModel,
        models.ClockedPairModel,
        data.LengthCurriculum(),
    ):
        if first not in heads and hasattr(owner, first):
            candidates.append(getattr(owner, first))
    for obj in candidates:
        for part in rest:
            if inspect.isclass(obj) and not hasattr(obj, part):
                # An attribute set in __init__ (`model.state_size`).
                source = inspect.getsource(obj)
                obj = part if f"self.{part} =" in source else None
            else:
                obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    return None


def _parameters():
    """The argument names of the public callables the doc is about."""
    names = set()
    for owner in (models, data):
        for name in owner.__all__:
            obj = getattr(owner, name)
            if callable(obj):
                try:
                    names.update(inspect.signature(obj).parameters)
                except (TypeError, ValueError):
                    pass
    for cls in (models.TruncatedBPTTModel, models.ClockedPairModel):
        for _, method in inspect.getmembers(cls, inspect.isfunction):
            names.update(inspect.signature(method).parameters)
    return names


def test_every_quoted_name_is_in_the_code(text):
    deps = {
        word
        for method in models.CLOCK_METHODS
        for key, reads in models.update_dependencies(method).items()
        for word in (key, *reads)
    }
    methods = set(models.TIME_METHODS) | set(models.CLOCK_METHODS)
    parameters = _parameters()
    unknown = []
    for token in _quoted(text):
        if token in NOT_CODE or token[0] in "([" or token.startswith("test_"):
            continue
        if token.startswith('"'):
            ok = token.strip('"') in methods
        elif token.startswith("scripts/"):
            ok = (ROOT / token).is_file() or token in NOT_YET_HERE
        elif token.endswith(".txt"):
            ok = token in data.PTB_CHAR_SHA256
        elif token.isupper() and token not in dir(data):
            ok = token == ptb.PTB_DIR_VARIABLE  # an environment variable
        else:
            name = token.split("(")[0].split("=")[0]
            ok = name in deps or name in parameters or _resolve(name) is not None
        if not ok:
            unknown.append(token)
    assert not unknown, f"names in docs/recurrent.md the code lacks: {unknown}"


def test_every_cited_test_exists(text):
    cited = set(re.findall(r"`(test_\w+)`", text))
    assert len(cited) >= 10
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined.update(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    assert cited <= defined, sorted(cited - defined)


def test_the_dependency_table_is_update_dependencies(text):
    rows = re.findall(r"^\| `\"(\w+)\"` \| (\w+) \| (.+) \|$", text, re.M)
    table = {}
    for method, part, reads in rows:
        table.setdefault(method, {})[part] = tuple(re.findall(r"`(\w+)`", reads))
    assert table == {m: models.update_dependencies(m) for m in models.CLOCK_METHODS}


def test_links_figure_and_results_markers(text, whole):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert (DOC.parent / target).is_file(), target
    assert "](figures/clock_timeline.png)" in text
    assert whole.count(BEGIN) == whole.count(END) == 1
    assert whole.index(BEGIN) < whole.index(END)
    # The anchor into method.md names one of its headings.
    heading = "## 11. Terminology"
    assert "method.md#11-terminology" in text
    assert heading in (DOC.parent / "method.md").read_text(encoding="utf-8")
