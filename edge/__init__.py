"""edge: a Kubernetes-native API gateway and layer-7 load balancer."""

__version__ = "0.1.0"
