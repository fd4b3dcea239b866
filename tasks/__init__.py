"""Huey queues, tasks and consumers for Wardrobe's background work."""
