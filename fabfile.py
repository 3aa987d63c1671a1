"""deploytest's reference fabfile: the red-green deploy flow composed from the reusable tasks.

    fab deploy-and-verify                  # on this machine
    fab -H web1,web2,web3 deploy-and-verify --junit report.xml
    fab -H web2 rollback --to 20261125112102
    fab -H web1,web2,web3 ship             # the same flow around a verify step of this project's own

Configuration lives under the ``deploytest`` key of fabric.yaml beside this file (see README.rst);
``-H a,b,c`` is one coordinated rollout over all the hosts.
"""

from invoke import task

from deploytest.assertions import assert_http
from deploytest.executor import CoordinatedTask
from deploytest.flow import Rollout, deploy_and_verify as red_green
from deploytest.tasks import deploy, deploy_and_verify, on_hosts, releases, rollback, status, unlock, verify
from deploytest.verifiers import python_verifier

__all__ = ["deploy", "deploy_and_verify", "releases", "rollback", "ship", "status", "unlock", "verify"]


def health_says_ok(target):
    """A verify step written like a pytest test: raise AssertionError when the host is not right."""
    assert_http(target, "http://127.0.0.1:8765/health", status=200, contains="ok")


@task(klass=CoordinatedTask)
@on_hosts(need_source=True)
def ship(targets, settings, console):
    """Deploy with this project's own Python verify step instead of the configured checks."""
    run = Rollout(settings, targets, console, verifier=python_verifier(health_says_ok))
    red_green(run)
    return 0
