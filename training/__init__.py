"""DeepSpeed training jobs that read the shards the jobs write (GRM SFT, meta-RM BCE).

Depends on schemas and the text protocol only, never on engines or Ray Data plumbing.
"""
