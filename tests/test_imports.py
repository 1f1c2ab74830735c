"""Every module of the package imports on its own as the first hf_hybridcl import (no import cycles).

``__main__`` is left out: importing it runs the main job.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import importlib, pkgutil, sys
import hf_hybridcl
names = sorted(m.name for m in pkgutil.walk_packages(hf_hybridcl.__path__, "hf_hybridcl.") if not m.name.endswith("__main__"))
failures = []
for name in names:
    for loaded in [k for k in sys.modules if k == "hf_hybridcl" or k.startswith("hf_hybridcl.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - report every module that fails
        failures.append(f"{name}: {type(err).__name__}: {err}")
print(len(names))
print("\n".join(failures))
"""


def test_every_module_imports_first():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    count, *failures = out.strip().split("\n")
    assert int(count) > 40
    assert not [f for f in failures if f], "\n".join(failures)
