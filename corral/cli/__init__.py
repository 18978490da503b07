"""The `corral` command: parse, validate, call, render."""
