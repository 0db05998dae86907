"""The app: name the fruit in a photo (`fruits classify`, `fruits serve`) with neither Spark nor Dagster."""
