"""The site config admins write (:mod:`.config`): shared dirs, channels, partitions and their
drivers, permissions, Slurm defaults; validated with ``file:line`` for every error."""
