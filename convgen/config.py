"""Every environment knob convgen reads, in one place, read when used (never at import)."""

from __future__ import annotations

import numbers
import os
import re
import shlex
import shutil
from pathlib import Path


def cache_dir() -> Path:
    """CONVGEN_CACHE_DIR, else $XDG_CACHE_HOME/convgen, else ~/.cache/convgen."""
    explicit = os.environ.get("CONVGEN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "convgen"


def c_compiler() -> list[str]:
    """The C compiler command, split like a shell would: $CC (e.g. "ccache gcc"), else cc."""
    return shlex.split(os.environ.get("CC") or "cc") or ["cc"]


def cxx_compiler() -> list[str]:
    """The C++ compiler command (the CUDA emulator), shell-split: $CXX, else c++."""
    return shlex.split(os.environ.get("CXX") or "c++") or ["c++"]


def extra_cflags() -> list[str]:
    """Extra flags appended to every C compile: $CONVGEN_CFLAGS (shell-split)."""
    return shlex.split(os.environ.get("CONVGEN_CFLAGS", ""))


def extra_cxxflags() -> list[str]:
    """Extra flags appended to every CUDA emulator (C++) compile: $CONVGEN_CXXFLAGS
    (shell-split); the emulator's counterpart of $CONVGEN_CFLAGS, e.g. for sanitizers."""
    return shlex.split(os.environ.get("CONVGEN_CXXFLAGS", ""))


# set_num_threads() overrides the environment for this process (None: read it)
_num_threads_override: int | None = None


def set_num_threads(n: int | None) -> None:
    """The default thread count of this process, like ``torch.set_num_threads``: what
    compile, bind, the functional ops, networks and the tuner use where no thread count is
    asked (kernels too small to profit stay on one). None goes back to the environment."""
    global _num_threads_override
    _num_threads_override = None if n is None else thread_count(n, "set_num_threads: n")


def get_num_threads() -> int:
    """The default thread count: set_num_threads(), else $CONVGEN_NUM_THREADS, else
    $OMP_NUM_THREADS (its first entry: "4,2" is 4), else the cores this process may run on."""
    if _num_threads_override is not None:
        return _num_threads_override
    for name in ("CONVGEN_NUM_THREADS", "OMP_NUM_THREADS"):
        value = _env_thread_count(name)
        if value is not None:
            return value
    try:
        return len(os.sched_getaffinity(0)) or 1  # a process pinned by taskset or a cgroup
    except (AttributeError, OSError):
        return os.cpu_count() or 1


num_threads = get_num_threads  # the name the rest of convgen reads it by


def _env_thread_count(name: str) -> int | None:
    """$name as a thread count; None when unset or empty. OpenMP's list form "4,2" (threads
    per nesting level) counts its first entry."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    first = text.split(",")[0].strip() if name == "OMP_NUM_THREADS" else text
    try:
        value = int(first)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {text!r}")
    return value


def thread_count(value: object, name: str) -> int:
    """``value`` as a thread count: TypeError naming ``name`` for a non-integer (a bool
    included), ValueError for one below 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= 1, got {value!r} "
                        f"({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


DEFAULT_CACHE_MAX_BYTES = 2 * 1024**3  # about 50,000 typical kernels (40 kB each)
_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def cache_max_bytes() -> int:
    """Size limit of the kernel cache: $CONVGEN_CACHE_MAX_BYTES, else 2 GiB."""
    text = os.environ.get("CONVGEN_CACHE_MAX_BYTES", "").strip()
    return parse_bytes(text, "CONVGEN_CACHE_MAX_BYTES") if text else DEFAULT_CACHE_MAX_BYTES


def parse_bytes(text: str, name: str) -> int:
    """A size: bytes, or a number with a K, M, G or T suffix in powers of 1024 ("500M",
    "1.5GiB", "2GB" all accepted); ValueError naming ``name`` otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*(?:([kmgt])i?)?b?", text.strip().lower())
    if match is None:
        raise ValueError(f"{name}: expected a size in bytes, optionally with a K, M, G or T "
                         f"suffix (e.g. 500M, 2G), got {text!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2) or ""])


def tune_check_load() -> bool:
    """Whether the tuner watches the machine's load (waits, re-times or refuses when other
    processes keep the cores busy): $CONVGEN_TUNE_CHECK_LOAD, "0"/"false"/"off" for no
    (a CI job sharing its cores), else yes."""
    text = os.environ.get("CONVGEN_TUNE_CHECK_LOAD", "").strip().lower()
    if text in ("", "1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"CONVGEN_TUNE_CHECK_LOAD: expected 0 or 1, got {text!r}")


def tuning_db() -> Path:
    """The tuning database (JSON lines): $CONVGEN_TUNING_DB, else <cache_dir>/tuning.jsonl."""
    explicit = os.environ.get("CONVGEN_TUNING_DB")
    if explicit:
        return Path(explicit).expanduser()
    return cache_dir() / "tuning.jsonl"


def templates_dir() -> Path:
    """The templates/ directory: package data when installed, else the checkout's."""
    package = Path(__file__).resolve().parent
    installed = package / "templates"  # convgen.templates in a wheel
    checkout = package.parent / "templates"
    for candidate in (installed, checkout):
        if (candidate / "c" / "conv.c.j2").is_file():
            return candidate
    raise FileNotFoundError(f"convgen templates not found in {installed} or {checkout}")


def nvcc() -> str | None:
    """The CUDA compiler: $CONVGEN_NVCC, else nvcc on PATH, else /usr/local/cuda/bin/nvcc;
    None where there is none (the CUDA tests then skip, saying so)."""
    explicit = os.environ.get("CONVGEN_NVCC")
    if explicit:
        return explicit
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


# set_cuda_device() overrides $CONVGEN_CUDA_DEVICE for this process (None: read the variable)
_cuda_device_override: str | None = None


def set_cuda_device(device: str | int | None) -> None:
    """Where ``backend="cuda"`` runs, for this process: "emulator" (the CPU emulator), a GPU
    ordinal (0, 1, ...), or None to go back to $CONVGEN_CUDA_DEVICE."""
    global _cuda_device_override
    if device is None:
        _cuda_device_override = None
        return
    _cuda_device_override = _check_cuda_device(str(device), "device")


def cuda_device() -> str:
    """"emulator" or a GPU ordinal as a string: set_cuda_device(), else
    $CONVGEN_CUDA_DEVICE, else "0" (the first GPU)."""
    if _cuda_device_override is not None:
        return _cuda_device_override
    value = os.environ.get("CONVGEN_CUDA_DEVICE", "").strip()
    return _check_cuda_device(value, "CONVGEN_CUDA_DEVICE") if value else "0"


def _check_cuda_device(value: str, name: str) -> str:
    value = value.strip().lower()
    if value == "emulator" or (value.isdigit() and len(value) < 4):
        return value if value == "emulator" else str(int(value))
    raise ValueError(f"{name}: expected 'emulator' or a GPU ordinal (0, 1, ...), got {value!r}")
