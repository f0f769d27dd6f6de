"""Model folders: building tiny models from configs, counting parameters."""
