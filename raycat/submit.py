"""`raycat submit JOB ARGS...`: run jobs/JOB.py on a Ray cluster through the Jobs API, with this
repository as the working dir; follow the logs; exit with the job's exit status."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
import uuid

from raycat.config import SubmitConfig
from raycat.errors import BadInput

# Never uploaded with the working dir: environments, data and outputs.
EXCLUDES = [".venv", ".git", "bench/data", "raycat-demo", "*.egg-info", "__pycache__", ".pytest_cache",
            ".ruff_cache"]
# Non-secret settings worth passing on; credentials stay on the nodes (instance roles, their own env),
# never in a runtime env, which the dashboard shows to anyone who can see the job.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
CONNECT_WAIT_S = 60.0


def entrypoint(cfg: SubmitConfig) -> str:
    return " ".join(shlex.quote(a) for a in [cfg.python, f"jobs/{cfg.job}.py", *cfg.args])


def already_submitted(error: Exception, job_id: str) -> bool:
    """Whether the Jobs API refused a submission because a job with this id exists (Ray's job
    manager: "Job with submission_id ... already exists")."""
    text = str(error)
    return job_id in text and "already exists" in text


def run_submit(cfg: SubmitConfig) -> int:
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise BadInput("raycat submit: no cluster; set RAY_ADDRESS to its dashboard (http://HEAD:8265) or pass "
                       "--address")
    if not os.path.isfile(os.path.join(cfg.working_dir, "jobs", f"{cfg.job}.py")):
        raise BadInput(f"--working-dir {cfg.working_dir}: no jobs/{cfg.job}.py in it (run from the repository)")
    from ray.job_submission import JobStatus, JobSubmissionClient

    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    runtime_env = {"working_dir": cfg.working_dir, "excludes": EXCLUDES, "env_vars": env}
    # A cluster just started (`ray up`, a new head pod) answers on its dashboard a few seconds
    # after its head is up: wait for it a while rather than fail at once.
    # One id for every try: a try whose answer was lost (a connection reset after the cluster took
    # the job) is retried with the same id, and the cluster refuses a second job under it, so the
    # job never runs twice.
    job_id = f"raycat-{cfg.job}-{uuid.uuid4().hex[:12]}"
    deadline, said = time.monotonic() + CONNECT_WAIT_S, False
    while True:
        try:
            client = JobSubmissionClient(address)
            client.submit_job(entrypoint=entrypoint(cfg), runtime_env=runtime_env, submission_id=job_id)
            break
        except RuntimeError as e:
            if already_submitted(e, job_id):
                break  # an earlier try got through
            raise
        except OSError as e:  # no answer, or the dashboard still starting (requests' errors are OSErrors)
            if time.monotonic() > deadline:
                raise
            if not said:
                print(f"raycat submit: {address} is not answering yet ({type(e).__name__}); trying again for up "
                      f"to {CONNECT_WAIT_S:.0f} s with the same job id {job_id}", flush=True)
                said = True
            time.sleep(2)
    print(f"raycat submit: job {job_id} submitted to {address}")
    if not cfg.wait:
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(follow())
    except Exception as e:  # noqa: BLE001 - log streaming is best effort; the status below is what counts
        print(f"raycat submit: log stream ended ({type(e).__name__}); waiting for the job")
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while client.get_job_status(job_id) not in terminal:
        time.sleep(1)
    info = client.get_job_info(job_id)
    code = info.driver_exit_code
    if code is None:
        code = 0 if info.status == JobStatus.SUCCEEDED else 1
    print(f"raycat submit: job {job_id} {info.status.value.lower()} (exit {code})")
    return int(code)
