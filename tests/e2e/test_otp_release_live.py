"""The nodes run the OTP the run asked for: the host's, or OTP 27 from the Debian 13 root
(RELCTL_TEST_OTP=27, see tests/tools/otp_select.py), so an OTP 27 run cannot pass on 25."""

from __future__ import annotations

import subprocess

import pytest

from tests.tools import otp_select
from tests.tools.otp_procs import NodeProc, erl_eval

pytestmark = pytest.mark.otp


def test_the_node_runs_the_otp_asked_for(counter_node: NodeProc) -> None:
    running = erl_eval(counter_node, "erlang:system_info(otp_release)").strip('"')
    if otp_select.in_root():
        assert running == "27"
        assert (otp_select.OTP27_ROOT / ".relctl-otp").read_text().strip() == "27"
    else:
        host = subprocess.run(
            ["erl", "-noshell", "-eval",
             'io:format("~s", [erlang:system_info(otp_release)]), halt().'],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert running == host
