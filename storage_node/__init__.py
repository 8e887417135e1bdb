"""Storage node: holds one segment of every protection group, persists redo records before acking."""
