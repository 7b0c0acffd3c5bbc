"""HTTP blueprints of the service."""
