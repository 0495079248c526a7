"""tribunal jobs: one module per job, the GRM text protocol, the pure math, engines and the CLI."""
