"""Data: synthetic data, discovering image/mask pairs, manifests, statistics."""
