"""One M-Bus meter as the agent's pipeline polls it: a readout is one
M-Bus transaction per telegram, and the meter's identification number from
the telegram header is its identity.

The link (drivers/mbus/link.py) takes only the addressed meter's answer. A
new identification number then is a meter swap, by the pipeline's rule and
this package's setting of it (``identity_confirm``):

- A meter addressed by its secondary address never swaps silently: the
  address is the identification number, so a telegram carrying another one
  is refused by the link (a failed poll). A replaced meter does not answer
  the selection at all; the technician puts the new number in the config,
  and the first readout under it is the swap.
- At a primary address, a new identification number is a swap once it has
  answered SWAP_CONFIRM_POLLS polls in a row; until then its readouts are
  held back and each such poll is a failed one (a foreign telegram: two
  meters on one address, a confused gateway).
"""

from __future__ import annotations

from drivers.core.errors import BusError
from drivers.core.protocol import Clock, PointInfo, Readout
from drivers.mbus.link import MbusLink
from drivers.mbus.points import point_steps, point_values
from drivers.mbus.profile import MbusProfile

SWAP_CONFIRM_POLLS = 3


class MbusDevice:
    """One M-Bus meter: address (primary or secondary), profile, schedule."""

    requests = 0  # one readout, however many telegrams the meter sends

    def __init__(self, link: MbusLink, device_id: str, address: int | str, interval: float,
                 profile: MbusProfile) -> None:
        self.link = link
        self.device_id = device_id
        self.address = address
        self.profile = profile
        self.intervals = (interval,)
        self.where = f"meter {address} on {link.port}"
        # Counters a profile names are known before the first telegram: their
        # step and a BCD register's wrap come with it.
        self.points = {p.name: PointInfo(p.name, p.unit or "", p.kind) for p in profile.points}
        self.identity_confirm = 1 if isinstance(address, str) else SWAP_CONFIRM_POLLS

    def identity_lost(self) -> None:
        """Every telegram names its meter: nothing to read again."""

    def read(self, group: int, clock: Clock) -> Readout:
        try:
            telegrams = self.link.read(self.address)
        except BusError as exc:
            return Readout(error=exc)
        stamp, mono = clock.stamp()
        records = [r for telegram in telegrams for r in telegram.records]
        steps = point_steps(self.profile, records)
        values = point_values(self.profile, records)
        points = {}
        for name, _value, unit, kind in values:
            step = steps.get(name)
            if step is None:
                points[name] = PointInfo(name, unit, kind)
                continue
            points[name] = PointInfo(name, unit, kind, step.resolution(), slack=float(step.step or 0),
                                     rollover_at=float(step.wraps_at) if step.wraps_at is not None else None)
        meter = next((t.header.identification for t in telegrams if t.header.identification), "")
        return Readout([(stamp, mono, [(points[name], value) for name, value, _, _ in values])], meter=meter,
                       points={name: info for name, info in points.items() if name in steps})
