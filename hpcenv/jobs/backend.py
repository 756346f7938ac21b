"""The site's scheduler backend, chosen from its ``scheduler`` setting.

Kept apart from :mod:`hpcenv.jobs.submit` so that ``status``, ``jobs``, ``logs`` and ``cancel``
get a backend without importing the submit chain (builder, routing, templates).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpcenv.scheduler import Selection, select_scheduler

if TYPE_CHECKING:
    from hpcenv.scheduler.base import Scheduler
    from hpcenv.site.config import SiteConfig


def site_selection(site: SiteConfig) -> Selection:
    """The site's scheduler backend and why it was chosen (``scheduler: slurm`` picks pyslurm
    or the CLI by the installed pyslurm and the cluster's release)."""
    return select_scheduler(site.scheduler, state_dir=site.state_dir,
                            bin_dir=site.slurm.bin_dir)


def site_scheduler(site: SiteConfig) -> Scheduler:
    return site_selection(site).scheduler
