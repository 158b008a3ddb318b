"""Both ends of sync: the wire protocol, the device uploader, the cloud ingest, store and console."""
