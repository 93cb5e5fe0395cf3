"""Configuration sources. Each one emits full snapshots of its objects."""
