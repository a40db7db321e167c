"""Test support: the environment plugin, real service processes and factories."""
