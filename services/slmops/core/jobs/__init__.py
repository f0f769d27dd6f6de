"""Jobs: the lifecycle (leases, records, events), its store, the Ray Jobs submitter, the shared servicer and the job entrypoint."""
