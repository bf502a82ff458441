"""ALPS (placeholder until the solver lands in this module)."""
