"""Contracts of every tribunal artefact: column names, Arrow schemas, validation, quarantine.

Pure pyarrow: nothing here imports ray, torch, transformers or vllm.
"""
