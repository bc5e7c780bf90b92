"""Batch scoring (Machine Learning Server's batch API): jobs in object storage, scored by Ray workers.

A job lives under ``batches/{execution_id}/`` in object storage: its input table is written once
with one Parquet row group per partition, each scoring task reads exactly its row group and writes
one whole results part, and readers only ever see complete parts. The HTTP routes
(``modelpool.management.batch_routes``) wrap :mod:`.service`; nothing here knows about HTTP.

Imports point one way: this package uses ``management``'s shared parts (the registry, request params,
archive leases), and of ``management``'s own modules only the application (``modelpool.management.app``) and the
batch routes import it.

Modules: :mod:`.params` (the request body), :mod:`.jobs` (job.json's typed record), :mod:`.layout` (keys
and names), :mod:`.inputs` (user data -> input table), :mod:`.model_inputs` (table -> handler arrays),
:mod:`.scoring` (one partition, inside a task), :mod:`.results` (reading parts and artifacts),
:mod:`.scheduler` and :mod:`.workers` (running jobs on Ray), :mod:`.service` (the API's core).
"""
