"""The package works from a wheel as well as from the checkout: templates ship as
package data, and an installed convgen compiles and runs a kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Never copied into the build tree: environments, caches and build outputs.
IGNORED = shutil.ignore_patterns(".git", ".venv", ".cache", ".hypothesis", ".pytest_cache",
                                 "__pycache__", "build", "dist", "*.egg-info", "out", "*.so")

RUN_CODE = """
import sys
import numpy as np
import convgen as cg
from convgen.config import templates_dir
from convgen.tolerance import close
venv = sys.argv[1]
assert cg.__file__.startswith(venv), cg.__file__
assert str(templates_dir()).startswith(venv), templates_dir()
spec = cg.ConvSpec(input_shape=(1, 3, 9, 8), out_channels=4, kernel_size=3, padding=1,
                   stride=2, activation="relu")
rng = np.random.default_rng(0)
x = rng.standard_normal(spec.input_shape).astype(np.float32)
w = rng.standard_normal(spec.weight_shape).astype(np.float32)
b = rng.standard_normal(spec.bias_shape).astype(np.float32)
kernel = cg.compile(spec)
assert kernel.library_path.startswith(sys.argv[2]), kernel.library_path
assert close(spec, kernel(x, w, b), cg.reference(spec, x, w, b))
# a whole network: the network templates and convgen.nn / convgen.graph ship too
from convgen import nn
net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                    nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.Softmax(dim=1))
model = net.compile((1, 3, 9, 8))
y = model(x)
assert y.shape == (1, 5) and np.allclose(y, model.reference(x), rtol=1e-4, atol=1e-5)
print("OK", cg.__file__)
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, (
        f"{command} failed ({result.returncode})\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr}")
    return result


def dependencies_only(target: Path) -> Path:
    """This interpreter's site-packages, linked entry by entry, without convgen itself.

    PYTHONPATH entries come before the venv's own site-packages, so an installed (or
    editable) convgen here would shadow the wheel's: leave every trace of it out.
    """
    target.mkdir()
    for name in ("purelib", "platlib"):
        site = Path(sysconfig.get_paths()[name])
        for entry in site.iterdir():
            lowered = entry.name.lower()
            if lowered.startswith(("convgen", "__editable__")) or lowered.endswith(
                    (".pth", ".egg-link")) or (target / entry.name).exists():
                continue
            (target / entry.name).symlink_to(entry)
    return target


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path):
    source = tmp_path / "src"  # build from a copy: the checkout gets no build/ or egg-info
    shutil.copytree(REPO, source, ignore=IGNORED)
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(wheels), str(source)], env=pip_env)
    [wheel] = wheels.glob("convgen-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next((archive.read(n).decode() for n in names
                             if n.endswith(".dist-info/entry_points.txt")), "")
    assert "convgen/templates/c/conv.c.j2" in names
    assert "convgen/templates/c/activation.j2" in names
    assert "convgen/__init__.py" in names
    assert "convgen = convgen.cli.main:main" in entry_points

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", str(wheel)], capture_output=True, text=True, env=pip_env, timeout=300)
    if installed.returncode != 0 and "--python" in installed.stderr:
        # An old pip without --python: unpack the wheel by hand (no console script then).
        purelib = run([str(python), "-c", "import sysconfig; "
                       "print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(purelib)
    else:
        assert installed.returncode == 0, installed.stderr

    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(dependencies_only(tmp_path / "deps"))
    cache_dir = tmp_path / "cache"
    env["CONVGEN_CACHE_DIR"] = str(cache_dir)
    work = tmp_path / "work"  # cwd away from the checkout, so it is not on sys.path
    work.mkdir()
    result = run([str(python), "-c", RUN_CODE, str(venv), str(cache_dir)], cwd=work, env=env)
    assert result.stdout.startswith("OK " + str(venv)), result.stdout

    script = venv / "bin" / "convgen"
    if installed.returncode == 0:
        assert script.is_file(), "pip did not install the convgen console script"
    command = [str(script)] if script.is_file() else [str(python), "-m", "convgen"]
    help_text = run([*command, "--help"], cwd=work, env=env).stdout
    assert "usage" in help_text.lower() and "convgen" in help_text
