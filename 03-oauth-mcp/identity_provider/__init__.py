"""The stand-in for the identity provider a real deployment already has; `authorization_server.py` runs it."""
