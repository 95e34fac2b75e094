"""Hands-on labs cut from the modules themselves: the starter is the module with a few lines blanked.

labs/README.md says what each lab is and how to run it; `python -m labs --help` lists the commands.
"""
