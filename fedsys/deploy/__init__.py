"""Deployment: certificates, node keys, SuperLink / SuperNode processes."""
