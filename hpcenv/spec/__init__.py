"""What an environment asks for: ``environment.yml`` parsing (:mod:`.environment`), the CUDA runtime
it needs (:mod:`.cuda`) and which NVIDIA drivers run which CUDA (:mod:`.drivers`).  Pure logic: no
filesystem state, no engine, no scheduler."""
