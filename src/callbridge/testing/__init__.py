"""Test doubles shipped with callbridge: a fake Voice Agent API and a Twilio simulator."""
