"""Configuration sources. Each one emits full snapshots of its objects."""


class CredentialsError(Exception):
    """No usable credentials for a source (a kubeconfig that cannot be read, say): raised
    at start, before anything is served; the message says where edge looked and why not.
    Declared here, not beside the Kubernetes client, so catching it imports no client."""
