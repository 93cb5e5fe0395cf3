"""Input schemas: turn users' Emissary objects into validated specs (pure)."""
