"""Broken and hostile devices for the tests, on real sockets and real ptys.

Written for the tests (not the simulators a technician runs): each one does
a single thing a bad meter, a bad gateway or an attacker on the bus does,
and the values it sends are marked, so a test can prove that none of them
ever reaches the platform as ``ok``.
"""
