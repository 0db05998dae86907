"""Where runs happen: the FRUITS_* settings, Spark settings, each deployment's resources, EMR."""
