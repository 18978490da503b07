"""Simulation support: the deterministic cluster simulator and the checkers that judge its runs."""
