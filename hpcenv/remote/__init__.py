"""Remote login nodes over SSH (fabric): ``hpcenv --remote NAME COMMAND ...``.

A laptop runs hpcenv commands on a cluster's login node: one SSH connection per command, reused
for every step (version check, uploads, the remote ``hpcenv`` call, polling).  The remote side runs
its own hpcenv, so envs are built there through its locked builder and jobs go to its scheduler.

- ``session``: ``RemoteSession``, the connection (checked host keys, failures classified,
  reconnect with backoff, the remote version check, commands and uploads over it);
- ``errors``: the ``RemoteError`` kinds a remote failure is reported as;
- ``hostkeys``: known_hosts naming, fingerprints and the policy that refuses unknown keys;
- ``uploads``: the job inputs a command names, placed in content-named dirs on the remote;
- ``jobs``: the remote hpcenv's JSON records, remote job status, waiting for a remote job;
- ``sync``: changed-files sync of ``--sync`` trees.

The ``--remote`` command line itself is :mod:`hpcenv.cli.remote`.  Fabric and paramiko are imported
inside the functions that need them: importing any of these modules stays cheap.
"""
