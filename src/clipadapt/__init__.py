"""clipadapt."""
