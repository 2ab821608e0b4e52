"""Parallelism beyond plain data sharding: pipeline/ (schedules, simulator, shard_map executor)."""
