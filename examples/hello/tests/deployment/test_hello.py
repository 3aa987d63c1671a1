"""hello's deployment tests: written before the release, red against what is live, green once it is.

``fab deploy-and-verify`` runs them in every verification (``tests:`` in fabric.yaml), on the hosts
it deploys to; by hand they run as any pytest test:

    pytest tests/deployment                                  # this machine
    pytest --deploytest-hosts=web1,web2 tests/deployment     # hosts over SSH
"""

from deploytest.assertions import assert_command, assert_file, assert_http

DEPLOY_TO = "/tmp/deploytest-hello"
HEALTH = "http://127.0.0.1:8765/health"


def test_health_says_ok(deploytest_host):
    assert_http(deploytest_host, HEALTH, status=200, contains="ok")


def test_release_1_0_is_served(deploytest_host):
    assert_http(deploytest_host, HEALTH, contains="1.0")
    assert_command(deploytest_host, f"python3 {DEPLOY_TO}/current/hello.py --version", stdout="1.0")


def test_current_is_the_live_release(deploytest_host, deploytest_release):
    # deploytest_release: the release deploytest made live (by hand: --deploytest-release=ID)
    assert_file(deploytest_host, f"{DEPLOY_TO}/releases/{deploytest_release}/hello.py")
    assert_file(deploytest_host, f"{DEPLOY_TO}/current", type="symlink",
                target=f"{DEPLOY_TO}/releases/{deploytest_release}")
