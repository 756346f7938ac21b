"""The offline demo/test conda channel (see ``hpcenv.demo.channel``).

Kept empty on purpose: ``python -m hpcenv.demo.channel`` must not find the module already
imported by its package.
"""
