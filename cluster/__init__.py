"""Bring-up and plumbing: settings, the local Ray cluster, Serve with the HAProxy ingress."""
