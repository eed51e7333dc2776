#!/usr/bin/env python3
"""Sets up the project's virtual environment and runs its jobs.

    python3 dev.py demo [flags]     # the main job: scripts/demo.py
    python3 dev.py test [pytest args]   # one pytest worker per core, up to 4
    python3 dev.py lesson [flags]   # runs docs/lesson.py, writes docs/lesson.ipynb

Each command first makes `.venv` (if missing) and installs the package with
its development extras into it (again whenever pyproject.toml changes), so
both work on a fresh clone with nothing but Python 3.10+. Needs only the
standard library.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".keras_sg-installed"
# This project's machines keep the original data files beside the checkout:
# each dataset's folder and the variable that names it to keras_sg.
SHARED_DATA = {
    "KERAS_SG_MNIST_DIR": ROOT.parent / "shared" / "data" / "mnist",
    "KERAS_SG_FASHION_MNIST_DIR": ROOT.parent / "shared" / "data" / "fashion-mnist",
    "KERAS_SG_PTB_DIR": ROOT.parent / "shared" / "data" / "ptb",
}
JOBS = {
    "demo": ["scripts/demo.py"],
    "test": ["-m", "pytest"],
    # Executes the lesson (full setting) and writes it with its outputs.
    "lesson": ["scripts/build_lesson.py"],
}


def ensure_environment() -> Path:
    python = BIN / "python"
    if not python.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    pyproject = ROOT / "pyproject.toml"
    if not STAMP.exists() or STAMP.stat().st_mtime < pyproject.stat().st_mtime:
        print("dev.py: installing keras_sg and its dependencies", flush=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.check_call(pip + ["--upgrade", "pip"])
        subprocess.check_call(pip + ["-e", f"{ROOT}[dev]"])
        STAMP.touch()
    return python


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in JOBS:
        print(f"usage: python3 dev.py {{{'|'.join(JOBS)}}} [args...]")
        return 2
    python = ensure_environment()
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for variable, folder in SHARED_DATA.items():
        if variable not in env and folder.is_dir():
            env[variable] = str(folder)
    args = argv[2:]
    if argv[1] == "test" and not any(a == "-n" or a.startswith("-n") for a in args):
        # One pytest worker per core plus one (at most 4: each holds a
        # TensorFlow), through pytest-xdist; `-n 0` runs the suite in one
        # process. The extra worker fills the time that the fault tests spend
        # waiting on a subprocess, a server or a timeout. An idle worker takes
        # tests queued for a busy one (worksteal), so a slow test does not
        # leave a core idle at the end; the slowest tests are listed, to keep
        # the suite under its 10 minutes.
        args = [
            "-n",
            str(min((os.cpu_count() or 1) + 1, 4)),
            "--dist=worksteal",
            "--durations=15",
            *args,
        ]
    return subprocess.call([str(python), *JOBS[argv[1]], *args], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
