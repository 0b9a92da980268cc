"""Redis-side coordination: what processes sharing a Redis use to agree (the per-key lock)."""
