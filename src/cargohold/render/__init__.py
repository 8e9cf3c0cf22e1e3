"""Pure renderers: a ``Plan`` becomes a ``docker run`` line or a Compose document.

No Docker and no I/O here: each renderer is a function from data to data, tested against golden
files. Writing a rendered file to disk is the CLI's job (atomically, see ``cargohold._atomic``).
"""

from cargohold.render.compose import render_compose
from cargohold.render.docker_run import docker_run_argv, render_docker_run

__all__ = ["docker_run_argv", "render_compose", "render_docker_run"]
