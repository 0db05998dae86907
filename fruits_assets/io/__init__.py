"""Where assets are stored and how they show: resources, the IO manager, metadata, plots."""
