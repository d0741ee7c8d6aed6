"""Roles: the programs of a lab (delay line, server, proxy), each run on its own event loop."""
