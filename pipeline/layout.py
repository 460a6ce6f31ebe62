"""Where every file of a dataset root lives. One place, so resume logic and readers agree.

<root>/manifest.json                 written last: its presence means the build is complete
<root>/captions_manifest.json        same, for a --captions-only run
<root>/shards/<name>.parquet         dataset shards (common.schemas.DATASET_SHARD)
<root>/candidates/<name>.parquet     rows that passed caption filters + URL dedup (CANDIDATE)
<root>/rejected/<stage>-<id>.parquet rejected rows with reasons (REJECTED)
<root>/report/                       filter report, examples, histograms
<root>/_work/                        resumable intermediate state (safe to delete after a build)
"""

from __future__ import annotations

from dataclasses import dataclass

from common import storage


@dataclass(frozen=True)
class Layout:
    root: str

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    # final outputs
    @property
    def manifest(self) -> str:
        return self.path("manifest.json")

    @property
    def captions_manifest(self) -> str:
        return self.path("captions_manifest.json")

    def shard(self, name: str) -> str:
        return self.path("shards", f"{name}.parquet")

    def candidates(self, name: str) -> str:
        return self.path("candidates", f"{name}.parquet")

    def rejected(self, stage: str, ident: str) -> str:
        return self.path("rejected", f"{stage}-{ident}.parquet")

    def report(self, name: str) -> str:
        return self.path("report", name)

    # intermediate state
    @property
    def config_lock(self) -> str:
        return self.path("_work", "config.json")

    @property
    def input_lock(self) -> str:
        return self.path("_work", "inputs.json")

    def caption_part(self, file_id: str, part: int) -> str:
        return self.path("_work", "captions", f"{file_id}-{part:05d}.parquet")

    def caption_done(self, file_id: str) -> str:
        return self.path("_work", "captions", f"{file_id}.done.json")

    def url_dedup_done(self, partition: int) -> str:
        return self.path("_work", "url_dedup", f"p{partition:05d}.done.json")

    def attempt(self, name: str, token: str, what: str) -> str:
        """One download attempt's own files (rejected, hashes, staged): a cancelled attempt that is
        still running can write here, but only the attempt the driver committed is ever read."""
        return self.path("_work", "attempts", name, token, f"{what}.parquet")

    def staged(self, name: str) -> str:
        """The driver's commit of a downloaded list: which attempt's files count, and its stats."""
        return self.path("_work", "staged", f"{name}.json")

    def failed_list(self, name: str) -> str:
        """A list that failed every retry in some run; kept so a later run reports its recovery."""
        return self.path("_work", "failed", f"{name}.json")

    def finalized(self, name: str) -> str:
        """Written once a list is published (its shard, or none when no row survived), with its stats."""
        return self.path("_work", "finalized", f"{name}.json")

    def image_dups(self, partition: int) -> str:
        return self.path("_work", "image_dups", f"p{partition:05d}.parquet")
