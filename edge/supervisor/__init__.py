"""The supervisor: sources, compiler, publisher, arbiter and admin server."""
