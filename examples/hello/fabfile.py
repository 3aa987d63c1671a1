"""The example's fabfile: deploytest's tasks, as a project would import them."""

from deploytest.tasks import deploy, deploy_and_verify, releases, rollback, status, unlock, verify

__all__ = ["deploy", "deploy_and_verify", "releases", "rollback", "status", "unlock", "verify"]
