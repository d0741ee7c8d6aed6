"""Binder, recreated: a fresh environment from binder/, the labs run as an unprivileged user
with no_new_privs set, as mybinder.org runs it (uid 1000, no capabilities, no capture).

Slow (it installs the requirements into a new virtual environment); the pip cache makes a
second run quicker.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER_UID = 1000
# repo2docker copies the repository in; these are the parts the labs need
COPY = ("pyproject.toml", "README.md", "lablib", "labs", "data", "binder")


def _python_for(uid, scratch):
    """A Python 3.11+ from which the unprivileged user can make a virtual environment."""
    candidates = ["/usr/bin/python3.11", shutil.which("python3.11"), "/usr/bin/python3", sys.executable]
    for i, path in enumerate(filter(None, candidates)):
        trial = scratch / f"probe-venv-{i}"
        probe = _as_user(uid, [path, "-c", "import sys, venv; assert sys.version_info >= (3, 11); "
                                           f"venv.create({str(trial)!r}, with_pip=False)"])
        if subprocess.run(probe, capture_output=True).returncode == 0 and (trial / "bin" / "python").exists():
            shutil.rmtree(trial, ignore_errors=True)
            return path
    return None


def _as_user(uid, argv):
    if os.getuid() == 0:
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", *argv]
    return ["setpriv", "--no-new-privs", *argv]


@pytest.fixture(scope="module")
def binder_env():
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    uid = BINDER_UID if os.getuid() == 0 else os.getuid()
    base = Path(tempfile.mkdtemp(prefix="lablib-binder-", dir="/tmp"))
    try:
        os.chmod(base, 0o777)
        python = _python_for(uid, base)
        if python is None:
            pytest.skip("no Python 3.11 from which an unprivileged user can make a virtual environment")
        repo, home, venv = base / "repo", base / "home", base / "venv"
        repo.mkdir()
        for name in COPY:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
            else:
                shutil.copy2(src, repo / name)
        home.mkdir()
        # build as the Binder user would (repo2docker builds as jovyan): everything it owns
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(base)], check=os.getuid() == 0)
        os.chmod(base, 0o755)
        env = {"HOME": str(home), "PATH": f"{venv}/bin:/usr/bin:/bin", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "LANG": "C.UTF-8"}
        for key in ("PIP_FIND_LINKS", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
            if key in os.environ:
                env[key] = os.environ[key]
        steps = [
            [python, "-m", "venv", str(venv)],
            [f"{venv}/bin/pip", "install", "-q", "-r", "binder/requirements.txt"],
            [f"{venv}/bin/pip", "install", "-q", "pytest", "nbval"],  # to run the lab as a test
        ]
        for step in steps:
            out = subprocess.run(_as_user(uid, step), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
            assert out.returncode == 0, f"{step}: {out.stderr[-2000:]}"
        yield uid, repo, venv, env
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_binder_environment_has_no_packet_capture(binder_env):
    uid, repo, venv, env = binder_env
    out = subprocess.run(_as_user(uid, [f"{venv}/bin/python", "-m", "lablib", "doctor", "--json"]), cwd=repo,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["capture"]["available"] is False
    assert report["capture"]["no_new_privs"] is True and "no CAP_NET_RAW" in report["capture"]["reason"]
    assert report["counters"]["readable"] is True and report["sock_diag"] is True


def test_the_labs_pass_under_nbval_as_the_binder_user(binder_env):
    uid, repo, venv, env = binder_env
    argv = [f"{venv}/bin/python", "-m", "pytest", "labs", "-q"]  # every notebook
    out = subprocess.run(_as_user(uid, argv), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
