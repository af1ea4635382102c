"""Shared building blocks of the plasticity experiments (see ../shared/DESIGN.md for the map)."""
