"""The live growth stream: a WebSocket service that plays models to many viewers (docs/stream-protocol.md)."""
