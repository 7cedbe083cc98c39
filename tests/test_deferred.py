"""agent/deferred.py: a module paho imports but the agent does not use is
loaded only on first use, and then behaves as if it had been imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


def run_python(code: str) -> str:
    # A fresh interpreter: this test process has imported urllib.request long ago.
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_agent_runs_without_loading_urllib_request_or_what_it_pulls_in() -> None:
    loaded = run_python(
        "import sys, agent.app, paho.mqtt.client\n"
        "print(sorted(m for m in ('http.client', 'email', 'email.message', 'urllib.response') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_the_first_use_loads_the_real_module_for_every_way_of_reaching_it() -> None:
    out = run_python(
        "import sys, agent.transports.mqtt\n"
        "import urllib.request\n"
        "print('before', 'http.client' in sys.modules)\n"
        "print('proxies', type(urllib.request.getproxies()).__name__)\n"  # what paho would call
        "from urllib.request import Request\n"
        "print('request', Request('http://127.0.0.1/').get_method())\n"
        "real = sys.modules['urllib.request']\n"
        "print('real', real.__file__.endswith('request.py'), urllib.request is real, 'http.client' in sys.modules)\n"
    )
    assert out.splitlines() == ["before False", "proxies dict", "request GET", "real True True True"]


def test_a_module_imported_already_is_left_alone() -> None:
    out = run_python(
        "import sys, urllib.request\n"
        "before = sys.modules['urllib.request']\n"
        "from agent import deferred\n"
        "deferred.defer('urllib.request')\n"
        "print(sys.modules['urllib.request'] is before)\n"
    )
    assert out == "True"


def test_two_threads_touching_the_stand_in_at_once_both_get_the_real_module(tmp_path: Path) -> None:
    """Both threads could find the stand-in in sys.modules and both remove
    it: the second removal was a KeyError in the thread that touched it. A
    trace function makes every line of the loader take 2 ms, so the eight
    threads are sure to meet inside it (without it the race shows in one
    run of three with 400 tries)."""
    for trial in range(5):
        (tmp_path / f"lazy_{trial}.py").write_text(f"VALUE = {trial}\n")
    out = run_python(
        "import sys, threading, time\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from agent import deferred\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_filename.endswith('deferred.py') and frame.f_code.co_name == 'load':\n"
        "        def slow(frame, event, arg):\n"
        "            if event == 'line':\n"
        "                time.sleep(0.002)\n"
        "            return slow\n"
        "        return slow\n"
        "    return None\n"
        "failures = []\n"
        "for trial in range(5):\n"
        "    name = f'lazy_{trial}'\n"
        "    deferred.defer(name)\n"
        "    stand_in = sys.modules[name]\n"
        "    barrier = threading.Barrier(8)\n"
        "    def touch():\n"
        "        sys.settrace(tracer)\n"
        "        barrier.wait()\n"
        "        try:\n"
        "            if stand_in.VALUE != trial:\n"
        "                failures.append('wrong value')\n"
        "        except Exception as exc:\n"
        "            failures.append(repr(exc))\n"
        "    threads = [threading.Thread(target=touch) for _ in range(8)]\n"
        "    [t.start() for t in threads]\n"
        "    [t.join() for t in threads]\n"
        "    if sys.modules[name] is stand_in or sys.modules[name].__file__ is None:\n"
        "        failures.append('still the stand-in')\n"
        "print(failures)\n"
    )
    assert out == "[]"
