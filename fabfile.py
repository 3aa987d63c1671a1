"""deploytest's reference fabfile: the red-green deploy flow composed from the reusable tasks.

    fab deploy-and-verify                  # on this machine
    fab -H web1,web2,web3 deploy-and-verify
    fab -H web2 rollback --to 20261125112102

Configuration lives under the ``deploytest`` key of fabric.yaml beside this file; see README.rst.
To build your own flow around your own verify or deploy step, compose deploytest.flow's stages.
"""

from deploytest.tasks import deploy, deploy_and_verify, releases, rollback, status, unlock, verify

__all__ = ["deploy", "deploy_and_verify", "releases", "rollback", "status", "unlock", "verify"]
