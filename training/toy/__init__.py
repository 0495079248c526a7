"""The toy GRM: a checkable arithmetic task and the recipe that trains a tiny GRM and meta-RM on it
with tribunal's own jobs (issue 10)."""
