"""bench/layers.py runs end to end on its smallest layer (speed is printed, never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_layers_smallest_layer_runs():
    env = dict(os.environ)
    env.setdefault("CONVGEN_CACHE_DIR", str(ROOT / ".cache" / "test-kernels"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "layers.py"), "--layers", "r18_1x1s2_shortcut",
         "--quick", "--threads", "1"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "GFLOP" in result.stdout and "cg/peer" in result.stdout
    assert "r18_1x1s2_shortcut" in result.stdout
    assert "FAIL" not in result.stdout
