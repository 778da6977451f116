"""Media decoding shared by ingest (indexer/) and queries (search/): images, text, captions, audio."""
