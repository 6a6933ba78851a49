"""The running service: serve (wiring), its worker processes, settlement of calls and the
supervision of calls in progress."""
