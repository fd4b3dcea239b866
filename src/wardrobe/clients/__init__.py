"""Clients of the other services: memcached, Redis, the brand API, the image store, the thread offload."""
