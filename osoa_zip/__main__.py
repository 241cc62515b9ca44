from .launcher import run

run()
