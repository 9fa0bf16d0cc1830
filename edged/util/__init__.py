"""Small stdlib-only helpers shared across the packages: file digests, an LRU map, lazy optional
imports with install hints, and a TOML writer."""
