"""Load a built C kernel or network: cffi's dlopen of a shared library, once per content."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import cffi

from convgen import config
from convgen.cache import file_sha256


# Every library loaded stays loaded for the life of the process. Closing one can
# unload the OpenMP runtime it pulled in while that runtime's worker threads are
# still parked inside it, which crashes the process later; libraries are small.
_LOADED: dict[tuple[str, str, str, str], tuple] = {}
_PATH_HASH: dict[str, str] = {}
_LOADED_LOCK = threading.Lock()


def load_function(library: Path | str, symbol: str, cdef: str, digest: str | None = None):
    """(ffi, lib, function) for ``symbol`` in the shared library at ``library``.

    The dynamic loader hands back the already-loaded library for a path it has
    seen, so a library rewritten in place (an AOT directory compiled again) is
    loaded from a private copy named by its content hash. ``digest`` is that hash
    when the caller has already verified it (cache entries, AOT manifests).
    """
    path = str(library)
    digest = digest or file_sha256(Path(path))
    key = (path, symbol, cdef, digest)
    with _LOADED_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            if _PATH_HASH.setdefault(path, digest) != digest:
                copy = config.cache_dir() / "tmp" / f"reload-{digest}.so"
                copy.parent.mkdir(parents=True, exist_ok=True)
                if not copy.exists():
                    tmp = copy.with_name(copy.name + f".{os.getpid()}.tmp")
                    shutil.copyfile(path, tmp)
                    os.replace(tmp, copy)
                path = str(copy)
            ffi = cffi.FFI()
            ffi.cdef(cdef)
            # RTLD_NODELETE: never unmapped, not even when cffi closes the handle at
            # interpreter exit, so the OpenMP runtime it pulled in stays mapped under pool
            # threads that may still be spinning (OMP_WAIT_POLICY=active crashed at exit)
            lib = ffi.dlopen(path, ffi.RTLD_NOW | ffi.RTLD_NODELETE)
            loaded = (ffi, lib, getattr(lib, symbol))
            _LOADED[key] = loaded
    return loaded
