"""CDS Hooks 2.0 service for tarlatamab (IMDELLTRA) order checking."""

__version__ = "0.1.0"
