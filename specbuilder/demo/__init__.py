"""The service demo: a server in a subprocess, the tutorial network trained per activation through the client.

``serve_subprocess`` (also used by the gRPC benchmarks and the tests) runs ``specbuilder serve`` in its own
process; ``experiment`` trains and measures one row per activation; ``figure`` draws them.
The command itself is ``specbuilder demo`` (``specbuilder.cli.demo_command``).
"""
