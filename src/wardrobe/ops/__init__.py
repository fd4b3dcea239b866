"""Operating the service: metrics, Sentry, the server's I/O and logs, and the continuous profiler."""
