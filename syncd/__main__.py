from syncd.cli import program

program()
