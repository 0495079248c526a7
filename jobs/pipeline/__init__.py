"""The plumbing every recipe shares: typed configs and their flags (``config``), the Ray Data
stages (``stages``), output directories with resume and manifests (``outputs``), the run report
every job ends with (``report``), Parquet chunking, threaded lanes and key filtering for the CPU
reducers (``files``), a resumable step journal (``journal``), and progress lines (``progress``).
"""
