"""Batch scoring (Machine Learning Server's batch API): pure Python + pyarrow, no Ray.

A job lives under ``batches/{execution_id}/`` in object storage: its input table is written once
with one Parquet row group per partition, each scoring task reads exactly its row group and writes
one whole results part, and readers only ever see complete parts. The Ray and HTTP layers wrap
these functions; nothing here knows about either.

Modules: :mod:`.layout` (keys and names), :mod:`.inputs` (user data -> input table),
:mod:`.scoring` (one partition, inside a task), :mod:`.results` (reading parts and artifacts).
"""
