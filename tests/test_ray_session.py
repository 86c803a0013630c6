"""The local Ray instance raycat starts: lean unless asked (ray_session.local_settings)."""

import json
import os
import subprocess
import sys

import pytest

from raycat.shell import ray_session


def test_a_local_instance_is_lean_unless_verbose_or_full_ray_is_asked():
    env, dashboard = ray_session.local_settings(verbose=False, dashboard=False, env={})
    assert env == ray_session.LEAN_ENV and dashboard is False
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_enable_metrics_collection"] == "0"
    # tune needs the dashboard's State API; the rest stays lean
    assert ray_session.local_settings(False, True, env={}) == (ray_session.LEAN_ENV, True)
    # --verbose or RAYCAT_FULL_RAY=1: Ray's defaults, dashboard and all
    assert ray_session.local_settings(True, False, env={}) == ({}, True)
    assert ray_session.local_settings(False, False, env={"RAYCAT_FULL_RAY": "1"}) == ({}, True)
    # a setting the user made wins
    env, _ = ray_session.local_settings(False, False, env={"RAY_USAGE_STATS_ENABLED": "1"})
    assert "RAY_USAGE_STATS_ENABLED" not in env


PROBE = """
import json, os, sys
sys.path.insert(0, {bench!r})
from procs import cmdline, descendants
from raycat.shell import ray_session
ray_session.connect(None)
import ray._common.usage.usage_lib as usage
cmds = [cmdline(p) for p in descendants(os.getpid())]
print(json.dumps({{"usage_stats": usage.usage_stats_enabled(), "cmds": cmds}}))
""".format(bench=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))  # noqa: E501


@pytest.mark.integration
def test_the_lean_instance_starts_a_bare_dashboard_head_and_sends_no_usage_report():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *ray_session.LEAN_ENV)}
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    cmds = seen["cmds"]
    assert any("gcs_server" in c for c in cmds) and any("/raylet" in c for c in cmds), cmds  # it did start Ray
    # Ray 2.60 starts its dashboard head process even with include_dashboard=False, but with no web
    # UI and only its usage module: no state, job, metrics or reporter modules polling the cluster
    heads = [c for c in cmds if "dashboard/dashboard.py" in c]
    assert heads and all("--disable-frontend" in c and "--modules-to-load=UsageStatsHead" in c for c in heads), heads
    assert seen["usage_stats"] is False
