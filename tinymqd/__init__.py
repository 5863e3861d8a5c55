"""tinymq: a tiny, reliable, persistent message queue between SQLite databases over UDP."""

__version__ = "0.1.0"
