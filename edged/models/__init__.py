"""The model catalogue: manifests and their schema, the search path, fetching, adding, loading."""
