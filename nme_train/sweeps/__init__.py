"""Sweeps: experiment grids (grids), planning which points run (plan), launching them
(launch). The command is nme_train.commands.sweep (`nme-sweep`)."""
