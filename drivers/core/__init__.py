"""The bottom layer that drivers/ and agent/ both build on.

Errors, typed-record validation, the located YAML source and the Reading:
nothing here imports anything of the project above it, so a protocol package
can be used and tested without the daemon.
"""
