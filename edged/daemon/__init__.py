"""The daemon: service lifecycle, sources and inbox, scheduler, streams, the request server and publisher."""
