"""The ZeroMQ wire: protocol v1, payload codecs, CURVE security, the shared context and the client."""
