"""Registered data sets (docs/datasets.md): the record and what a job names."""
