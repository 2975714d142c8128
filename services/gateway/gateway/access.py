"""Who may see what: the one access policy every read API applies (grading queue, images,
jobs; the dashboard and later APIs reuse it rather than deciding per route).

- Data managers and administrators see every lab unit's uploads and every job.
- Uploaders see the uploads of their own lab units only, and list only their own jobs.
- A job token opens its job for anyone signed in (the fundus help: "Jobs can be viewed by any
  user with the job token"), so a job id is shown only to someone who may list that job:
  the job page shows filenames, and a filename can hold a patient's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.accounts import User
from kit.ports import AnyOf

__all__ = ["Access"]


@dataclass(frozen=True)
class Access:
    user: User

    @property
    def sees_all(self) -> bool:
        return self.user.role in ("admin", "data_manager")

    @property
    def sees_audit_details(self) -> bool:
        """IP addresses of uploads and sign-ins."""
        return self.user.is_admin

    def lab_unit_filter(self, field: str = "lab_unit_id") -> dict[str, Any]:
        """A documents filter that keeps only what this user may see."""
        if self.sees_all:
            return {}
        return {field: AnyOf(list(self.user.lab_unit_ids))}

    def may_see_lab_unit(self, lab_unit_id: str | None) -> bool:
        return self.sees_all or (lab_unit_id is not None and lab_unit_id in self.user.lab_unit_ids)

    def lists_jobs_of(self) -> str | None:
        """Whose jobs the recent-jobs list shows: None for everyone's."""
        return None if self.sees_all else self.user.username

    def may_list_job(self, uploader: str) -> bool:
        return self.sees_all or uploader == self.user.username
