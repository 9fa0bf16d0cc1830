"""ZeroMQ I/O: the v1 wire protocol, the request server, the results publisher and security.

See docs/protocol.md for the protocol itself. Import the submodules directly
(``edged.io.server.RequestServer``, ``edged.io.publisher.Publisher``); importing this package
imports nothing heavy and opens no sockets.
"""
