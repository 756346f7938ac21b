"""The locked builder: what a build is (:mod:`.plan`), building it exactly once
(:mod:`.builder`), and exports to environment.yml, lockfiles and ``@EXPLICIT`` lists
(:mod:`.export`)."""
