"""The Jenkins and GitHub Actions examples say what the GitLab one (run for real in test_ci_gitlab.py)
does: deploy the build's archive with --source/--label, keep both reports whatever the outcome, and
give exit 1, 2 and 3 their own words (3 pages)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

CI = Path(__file__).resolve().parent.parent / "examples" / "ci"


def fab_line(text: str) -> str:
    match = re.search(r"fab (?:\$\{SSH_CONFIG:\+-S \"\$SSH_CONFIG\"\} )?-H \"\$DEPLOY_HOSTS\" deploy-and-verify"
                      r"(?:[^\n]*\\\n)*[^\n]*", text)
    assert match is not None, text
    return match.group(0)


def test_every_pipeline_deploys_the_build_with_both_reports() -> None:
    for name in (".gitlab-ci.yml", "Jenkinsfile", "github-deploy.yml"):
        line = fab_line((CI / name).read_text())
        for option in ("--source", "--label", "--json", "--junit"):
            assert option in line, (name, option)


def test_github_workflow_keeps_reports_whatever_the_outcome_and_pages_on_3() -> None:
    workflow = yaml.safe_load((CI / "github-deploy.yml").read_text())
    steps = workflow["jobs"]["deploy"]["steps"]
    by_name = {s.get("name"): s for s in steps}
    assert by_name["Keep the reports"]["if"] == "always()"
    assert by_name["Keep the reports"]["with"]["path"] == "reports/"
    assert by_name["Page on-call"]["if"] == "failure() && steps.deploy.outputs.exit_code == '3'"
    script = by_name["Deploy and verify"]["run"]
    assert "|| code=$?" in script and "exit $code" in script
    for words in ("Rolled back", "Refused", "Needs a human"):
        assert words in script


def test_jenkinsfile_keeps_reports_whatever_the_outcome_and_maps_exit_codes() -> None:
    text = (CI / "Jenkinsfile").read_text()
    post = text[text.index("post {"):]
    assert "always {" in post and "junit testResults: 'reports/deploytest.xml'" in post
    assert "archiveArtifacts artifacts: 'reports/*'" in post
    assert "sh(returnStatus: true" in text
    for case, words in (("case 1:", "ROLLED BACK"), ("case 2:", "REFUSED"), ("default:", "NEEDS A HUMAN")):
        assert words in text[text.index(case):], case
    assert text.count("{") == text.count("}")
