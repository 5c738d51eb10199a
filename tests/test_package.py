"""The checkout is a package: ``pip install -e .`` in a fresh venv gives the ``ambient`` command (offline, no deps)."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["train", "sample", "index", "evaluate", "grid", "finetune"]


def _run(cmd: list[str], cwd: Path, deps: bool = False) -> subprocess.CompletedProcess:
    """Run a command in the fresh venv; ``deps``: with this environment's packages (torch & co.) on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if deps:
        env["PYTHONPATH"] = sysconfig.get_path("purelib")
    env["PIP_NO_INDEX"] = "1"  # offline: nothing may be downloaded
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new venv with none of the project's dependencies (not even pip), given this environment's setuptools to
    build with, and the checkout installed in it by this environment's pip (``pip --python``): nothing is downloaded."""
    where = tmp_path_factory.mktemp("pkg") / "venv"
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], where).stdout.strip()
    )
    ours = Path(sysconfig.get_path("purelib"))
    if not (ours / "setuptools").is_dir():
        pytest.skip(f"no setuptools in {ours} to build the package with offline")
    for path in [ours / "setuptools", *ours.glob("setuptools-*.dist-info"), *ours.glob("*distutils*")]:
        (site / path.name).symlink_to(path)  # the package, its entry points (the build commands), the distutils shim
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-build-isolation"]
    proc = _run([*cmd, "-e", str(ROOT)], where)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return where


def test_installed_ambient_command_is_python_m_ambient_and_lists_the_subcommands(fresh_venv, tmp_path):
    exe = fresh_venv / "bin" / "ambient"
    assert exe.is_file(), "pip install -e . wrote no 'ambient' command: [project.scripts] in pyproject.toml"
    # Run outside the checkout, so that only the installed package can be imported. The parser of `train` is built
    # from TrainConfig (ambient.training imports torch): the dependencies come from this environment.
    proc = _run([str(exe), "--help"], tmp_path, deps=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in SUBCOMMANDS:
        assert name in proc.stdout, (name, proc.stdout)
    same = _run([str(fresh_venv / "bin" / "python"), "-m", "ambient", "--help"], tmp_path, deps=True)
    assert same.returncode == 0 and same.stdout == proc.stdout
    for verb in SUBCOMMANDS:
        sub = _run([str(exe), verb, "--help"], tmp_path, deps=True)
        assert sub.returncode == 0 and "usage:" in sub.stdout, (verb, sub.stderr[-2000:])


def test_installed_package_is_this_checkout_imports_lazily_and_brought_no_dependencies(fresh_venv, tmp_path):
    python = str(fresh_venv / "bin" / "python")
    code = "import sys, ambient, ambient.cli, demo; print(ambient.__file__, demo.__file__, 'torch' in sys.modules)"
    proc = _run([python, "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ambient_file, demo_file, torch_loaded = proc.stdout.split()
    assert Path(ambient_file) == ROOT / "ambient" / "__init__.py"
    assert Path(demo_file) == ROOT / "demo" / "__init__.py"  # the app's package ships too (app.py imports it)
    assert torch_loaded == "False"  # `import ambient` imports its public names on first use
    assert _run([python, "-c", "import torch"], tmp_path).returncode != 0  # --no-deps: torch is not in this venv
    proc = _run([python, "-c", "import ambient; ambient.no_such_name"], tmp_path)
    assert proc.returncode != 0 and "has no attribute 'no_such_name'" in proc.stderr


def test_an_unknown_subcommand_fails_with_usage(fresh_venv, tmp_path):
    proc = _run([str(fresh_venv / "bin" / "ambient"), "no-such-verb"], tmp_path, deps=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_declared_dependencies_admit_the_pinned_versions_and_pin_torch_exactly():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    declared = {
        canonicalize_name(r.name): r
        for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    }
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    assert set(declared) == set(pins), set(declared) ^ set(pins)
    for name, version in pins.items():
        assert declared[name].specifier.contains(version), (name, str(declared[name].specifier), version)
    for name in ("torch", "torchvision"):  # a range lets pip choose another (on Linux, a multi-GB CUDA) build
        assert str(declared[name].specifier) == f"=={pins[name]}"


def test_help_needs_no_torch(fresh_venv, tmp_path):
    """``ambient --help`` and every subcommand's help run where torch is not even installed (the configs, whose
    fields make the options, import no torch); a command that trains still says what it misses."""
    exe = str(fresh_venv / "bin" / "ambient")
    top = _run([exe, "--help"], tmp_path)
    assert top.returncode == 0 and "usage:" in top.stdout, top.stderr[-2000:]
    for verb in ("train", "finetune", "grid"):
        sub = _run([exe, verb, "--help"], tmp_path)
        assert sub.returncode == 0 and "usage:" in sub.stdout, (verb, sub.stderr[-2000:])
    train = _run([exe, "train", "--help"], tmp_path).stdout
    assert "--block-out-channels" in train and "--lr-decay" in train and "(default: -1.2)" in train
    run = _run([exe, "train", "--steps", "1", "--out", str(tmp_path / "run")], tmp_path)
    assert run.returncode != 0 and "torch" in run.stderr
