"""Finding photos: the inbox watcher and the bulk ingest, both registering through one Registrar."""
