"""The commands: the main command, fruits classify/serve, the quarantine listing; terminal output."""
