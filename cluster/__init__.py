"""How work gets resources: connecting to Ray, storage filesystems, actor-pool sizing."""
