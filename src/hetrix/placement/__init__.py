"""Placement: which backend runs each node, and why."""
