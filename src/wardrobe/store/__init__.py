"""Postgres: the pool and every SQL statement, one module per aggregate."""
