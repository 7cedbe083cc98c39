"""retrofit-agent: meters -> durable buffer -> MQTT, on a building's gateway."""

from agent import deferred

# Before any module here imports paho-mqtt, which loads urllib.request (1.8 MB)
# only to look up a proxy the agent never uses: see agent/deferred.py.
deferred.defer("urllib.request")
