from imgshare.cli import run

run()
