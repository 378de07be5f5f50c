"""Tasks: a model, its data and its metric, loaded from local files only (never from a hub)."""
