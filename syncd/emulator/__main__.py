"""`python -m syncd.emulator`: the same as `syncd emulator`."""

from syncd.emulator.cli import emulator_command

emulator_command(prog_name="syncd emulator")
