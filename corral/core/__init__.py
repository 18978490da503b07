"""Protocol cores: pure state machines that do no I/O (no sockets, clock, threads or files).

Shells in `corral.services` feed them events and carry out the effects they return; the simulator in
`corral.sim` drives the very same classes on a fake network and clock.
"""
