"""Helpers shared by the tests: raw Twilio requests, sockets, a TCP proxy, the server as
a process, log events to await."""
