"""Standard-library modules a dependency imports but the agent rarely uses.

paho-mqtt imports ``urllib.request`` at module level, which pulls in
``http.client`` and the ``email`` package: 28 modules and about 1.8 MB of
resident memory at start (Python 3.11, importing agent.app and paho: 30.9
MB with the stand-in, 32.7 MB without), 1.4 MB in the benchmark's steady
state (docs/performance.md): some 5 % of the agent's memory, not more.
paho only calls it to look for an ``mqtt_proxy`` environment
variable, and only when PySocks is installed, which the agent does not
depend on.

``defer(name)`` puts a stand-in module under that name. The first time
anything reads an attribute of it, the real module is imported and
answers; from then on ``sys.modules`` holds the real module. So a caller
never sees a difference, it only pays for the module if it uses it. Two
threads may touch the stand-in at once: one of them swaps it out (under a
lock), and the import system makes the other wait for the same import.

``importlib.util.LazyLoader`` would be the textbook tool, but on Python
3.11 an ``import`` statement naming a lazy module reads its ``__spec__``,
which runs the module at once, so it saves nothing here.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types


def defer(name: str) -> None:
    """Stand in for `name` until something reads from it. Call before the
    import that would load it; a module already imported is left alone."""
    if name in sys.modules:
        return
    parent_name, _, child = name.rpartition(".")
    parent = importlib.import_module(parent_name) if parent_name else None
    stand_in = types.ModuleType(name, f"Stand-in for {name}, imported on first use.")
    swap = threading.Lock()

    def load(attribute: str) -> object:
        with swap:  # check and remove as one step: a second thread would find it gone (KeyError)
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
        # Outside the lock: the import system's own per-module lock makes a
        # second thread wait for this import and then hands it the same module.
        return getattr(importlib.import_module(name), attribute)

    vars(stand_in)["__getattr__"] = load  # PEP 562: the module's own attribute lookup
    sys.modules[name] = stand_in
    if parent is not None:
        setattr(parent, child, stand_in)
