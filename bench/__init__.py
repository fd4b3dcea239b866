"""The load test, the original architecture it is compared with, and the capacity model built on its numbers."""
