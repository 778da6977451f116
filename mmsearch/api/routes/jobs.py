"""Background indexing of a folder: start one, follow it, cancel it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi import Path as PathParam

from mmsearch.api.deps import ServiceDep
from mmsearch.api.errors import ERRORS, WRITE_ERRORS
from mmsearch.api.schemas import ErrorOut, JobList, JobOut, JobRequest
from mmsearch.api.security import require_writer

router = APIRouter(tags=["jobs"])

JobIdPath = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.post("/jobs", status_code=202, response_model=JobOut, dependencies=[Depends(require_writer)],
             responses={400: ERRORS[400], 404: {"model": ErrorOut, "description": "No such folder."},
                        **WRITE_ERRORS}, summary="Start indexing a folder")
def start_job(req: JobRequest, response: Response, service: ServiceDep) -> dict[str, Any]:
    """Index a folder under a configured index root, in the background: new, changed and
    deleted files. Queries keep answering; new items appear when the job finishes.
    Follow it at the returned `url`."""
    job = service.jobs.start(service.index_path(req.path))
    response.headers["Location"] = f"/jobs/{job.id}"
    return job.as_dict()


@router.get("/jobs", response_model=JobList, summary="Recent jobs")
def list_jobs(service: ServiceDep) -> dict[str, Any]:
    return {"jobs": [j.as_dict() for j in service.jobs.list()]}


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: ERRORS[404]}, summary="A job's progress")
def get_job(job_id: JobIdPath, service: ServiceDep) -> dict[str, Any]:
    """`state` goes queued, running, then done, failed or cancelled; `done`/`total` count files."""
    return service.jobs.get(job_id).as_dict()


@router.delete("/jobs/{job_id}", status_code=202, response_model=JobOut,
               dependencies=[Depends(require_writer)], responses={404: ERRORS[404], **WRITE_ERRORS},
               summary="Cancel a job")
def cancel_job(job_id: JobIdPath, service: ServiceDep) -> dict[str, Any]:
    """Stop a running job: files embedded so far are kept and the indexes synced."""
    return service.jobs.cancel(job_id).as_dict()
