"""What is running, in a form a fleet operator can compare across gateways.

The configuration is identified by the SHA-256 of its file's bytes as they
were loaded (agent/config.py puts it on LoadedConfig), not of the validated
config: the platform can compute it from the YAML it pushed and a technician
with `sha256sum`, and it does not change when a new version of the agent
fills in other defaults. The profiles are identified the same way, by the
bytes of the files of the profiles the devices use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.config import LoadedConfig
from drivers.profile import BUNDLED_DIR

SHORT = 12  # hex digits shown to people; the status message carries all 64


def profile_file(origin: str) -> Path:
    """The file a profile was read from (``bundled:NAME.yaml`` or a path)."""
    kind, sep, name = origin.partition(":")
    return BUNDLED_DIR / name if sep and kind == "bundled" else Path(origin)


def profile_set(loaded: LoadedConfig) -> dict[str, object]:
    """The profiles the devices use: their names, where each came from, and
    one SHA-256 over every one's name and file bytes (sorted by name)."""
    names = sorted({device.profile for device in loaded.config.devices})
    digest = hashlib.sha256()
    origins: dict[str, str] = {}
    for name in names:
        origin = loaded.catalogue.get(name).origin
        origins[name] = origin
        try:
            content = hashlib.sha256(profile_file(origin).read_bytes()).hexdigest()
        except OSError:
            content = "unreadable"
        digest.update(f"{name}\0{content}\n".encode())
    return {"names": names, "origins": origins, "sha256": digest.hexdigest()}
