"""One reading of a host list: ``fab -H``, ``--deploytest-hosts`` and the tasks' targets agree."""

from __future__ import annotations

import pytest

from deploytest.errors import UsageError
from deploytest.hosts import LocalTarget, host_list
from deploytest.ssh import targets_for


def test_a_comma_separated_list_in_order_without_blanks_or_repeats() -> None:
    assert host_list("web2, web1,,web2 , db") == ["web2", "web1", "db"]
    assert host_list("") == [] and host_list(None) == [] and host_list(" , ") == []


def test_a_sequence_is_kept_as_written_so_a_bad_name_is_still_refused() -> None:
    assert host_list(["web1", "web2", "web1"]) == ["web1", "web2"]
    assert host_list(["", " web1"]) == ["", " web1"]
    with pytest.raises(UsageError, match="bad host name ''"):
        targets_for(["web1", ""])


def test_no_hosts_means_the_local_machine() -> None:
    targets = targets_for(host_list(""))
    assert len(targets) == 1 and isinstance(targets[0], LocalTarget)
