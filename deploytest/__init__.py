"""deploytest: test-driven deployment for Fabric: deploy, verify, roll back on its own."""

__version__ = "0.1.0"
