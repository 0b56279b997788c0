"""HTTP and WebSocket routes; each module exposes ``setup(app)``."""
