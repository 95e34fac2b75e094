"""The tools every module shares, named as in the Go workshop so the two can be compared.

A tool is a plain typed function: the SDK turns the type hints into the input
JSON Schema, checks each call's arguments against it, and sends the docstring
to the model as the tool's description. Write the docstring for the model.
"""

from __future__ import annotations


def echo_message(message: str) -> str:
    """Echo a message back, prefixed with 'Echo: '."""
    return f"Echo: {message}"


def add_numbers(num1: float, num2: float) -> float:
    """Add two numbers and return their sum."""
    return num1 + num2
